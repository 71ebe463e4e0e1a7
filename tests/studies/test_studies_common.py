"""The studies' shared parts: the floor cache is keyed by data and settings, cells resume, report helpers."""

import json
import math

import numpy as np
import pytest

from lossfloor.data.load import load_dataset
from lossfloor.floor.config import EstimatorConfig
from lossfloor.studies import common

SIGMAS = np.geomspace(0.05, 5.0, 3)


@pytest.fixture(scope="module")
def rings():
    return load_dataset("ring", n=64), load_dataset("ring", n=64, seed=1)


def test_floor_cache_is_reused_only_for_the_same_data_grid_settings_and_seed(rings, tmp_path):
    a, b = rings
    assert a.fingerprint != b.fingerprint
    path = tmp_path / "floor.json"
    config = EstimatorConfig(queries=8)
    first = common.cached_floor(path, a, SIGMAS, config, extra=lambda c: {"note": len(c.sigma)})
    assert json.loads(path.read_text())["note"] == 3 and first.fingerprint == a.fingerprint
    stamp = path.stat().st_mtime_ns
    again = common.cached_floor(path, a, SIGMAS, config)
    assert path.stat().st_mtime_ns == stamp and np.array_equal(again.loss, first.loss)
    for data, sigmas, cfg, seed in ((b, SIGMAS, config, 0), (a, SIGMAS[:2], config, 0),
                                    (a, SIGMAS, EstimatorConfig(queries=16), 0), (a, SIGMAS, config, 1)):
        curve = common.cached_floor(path, data, sigmas, cfg, seed=seed)
        assert curve.fingerprint == data.fingerprint and len(curve.sigma) == len(sigmas)
        assert curve.settings["queries"] == cfg.queries and curve.settings["seed"] == seed
        assert common.load_floor(path)[0].settings == curve.settings  # rewritten


def test_floor_cache_reads_the_older_wrapped_layout(rings, tmp_path):
    a, _ = rings
    config = EstimatorConfig(queries=8)
    curve = common.cached_floor(tmp_path / "new.json", a, SIGMAS, config)
    old = {"curve": {**curve.to_dict(), "fingerprint": ""}, "fingerprint": a.fingerprint, "x": 1.0}
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded, stored = common.load_floor(tmp_path / "old.json")
    assert loaded.fingerprint == a.fingerprint and stored["x"] == 1.0
    assert common.floor_matches(loaded, a, SIGMAS, config, 0)


def test_a_floor_cached_with_another_chunk_size_is_reused(rings, tmp_path):
    """Chunk and batch sizes set speed, not the estimate: a floor cached before a default changed (the
    committed results/schedule/floor.json used chunks of 8192) is reused; another estimate setting is not."""
    from dataclasses import replace

    a, _ = rings
    config = EstimatorConfig(queries=8)
    fast = replace(config, chunk_size=8192, batch_size=7)
    curve = common.cached_floor(tmp_path / "f.json", a, SIGMAS, fast)
    assert common.floor_matches(curve, a, SIGMAS, config, 0)
    assert not common.floor_matches(curve, a, SIGMAS, replace(config, queries=9), 0)


def test_run_cells_computes_only_missing_or_stale_cells(tmp_path):
    calls = []

    def compute(cell):
        calls.append(cell)
        return {"cell": cell, "version": 2}

    path_of = lambda c: tmp_path / f"{c}.json"  # noqa: E731
    (tmp_path / "1.json").write_text(json.dumps({"cell": 1, "version": 2}))
    (tmp_path / "2.json").write_text(json.dumps({"cell": 2, "version": 1}))  # stale
    results = common.run_cells([0, 1, 2], path_of, compute, matches=lambda r: r["version"] == 2,
                               progress=False)
    assert calls == [0, 2] and [r["cell"] for r in results] == [0, 1, 2]
    assert json.loads((tmp_path / "2.json").read_text())["version"] == 2
    calls.clear()
    common.run_cells([0, 1, 2], path_of, compute, progress=False)
    assert calls == []


def test_mean_se_and_paired_difference():
    assert common.mean_se([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1 / math.sqrt(3)))
    assert math.isnan(common.mean_se([1.0])[1])
    # paired: a constant offset has zero spread even though each arm varies a lot
    a, b = {0: 10.0, 1: 20.0, 2: 30.0, 3: 5.0}, {0: 9.0, 1: 19.0, 2: 29.0}
    assert common.paired_difference(a, b) == pytest.approx((1.0, 0.0, 3))


def test_tables():
    md = common.markdown_table(["a", "b"], [["1", "2"]], "T")
    assert md == "### T\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    text = common.text_table(["name", "v"], [["x", "1.5 ± 0.1"], ["longer", "2"]])
    lines = text.splitlines()
    assert lines[0].startswith("name  ") and lines[2].index("1.5") == lines[0].index("v")
    assert common.fmt_pm(1.23456, 0.01) == "1.235 ± 0.010" and common.fmt_pm(150.0) == "150.0"
    with pytest.raises(ValueError, match="choose from a, b"):
        common.check_choice("thing", "c", ("a", "b"))


def test_diagnose_terminal_table_lists_every_variant():
    """What `lossfloor study diagnose` prints, from the committed report."""
    from pathlib import Path

    from lossfloor.studies.diagnose.run import diagnose_terminal_table

    report = json.loads((Path(__file__).parents[2] / "results/diagnose/diagnose_study.json").read_text())
    lines = diagnose_terminal_table(report).splitlines()
    rows = [(name, r["variant"]) for name, d in report["datasets"].items() for r in d["variants"]]
    assert len(lines) == 2 + len(rows) and lines[0].startswith("data")
    for line, (name, variant) in zip(lines[2:], rows, strict=True):
        assert line.split()[:2] == [name, variant] and line.count("±") == 3
