"""The workflow layer under the CLI: settings defaults, checks before writing, outputs and progress bars."""

import json

import numpy as np
import pytest
import torch

from lossfloor.app.common import check_coverage, parse_sigmas, resolve_device
from lossfloor.app.diagnose import SplitBars
from lossfloor.app.estimate import (
    ESTIMATE_FILES,
    EstimateSettings,
    default_queries,
    prepare_estimate,
    run_estimate,
)
from lossfloor.app.sample import SampleSettings, run_sample
from lossfloor.floor.config import DEFAULT_QUERIES, EstimatorConfig
from lossfloor.objective.objective import get_objective


def test_one_default_for_the_queries():
    assert EstimatorConfig().queries == DEFAULT_QUERIES
    assert default_queries(100) == 100 and default_queries(10**6) == DEFAULT_QUERIES
    assert default_queries(100, per_point=2.5) == 250 and default_queries(100, 7) == 7
    with pytest.raises(ValueError, match="not both"):
        default_queries(100, 7, 1.0)


def test_coverage_check_without_a_fake_curve():
    check_coverage(get_objective("edm"), parse_sigmas(None))
    with pytest.raises(ValueError, match="widen"):
        check_coverage(get_objective("flow"), [1.0, 2.0])
    with pytest.raises(ValueError, match="widen"):
        check_coverage(get_objective("ddpm"), [1e5, 1e6])


def test_estimate_runs_and_writes_its_files(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(40, 2)))
    settings = EstimateSettings(data=str(tmp_path / "x.npy"), sigmas=(0.1, 1, 10), queries=32,
                                         out=str(tmp_path / "out"))
    run = prepare_estimate(settings)
    assert not (tmp_path / "out").exists() and run.queries == 32 and run.main
    result = run_estimate(run, progress=False)
    assert [p.name for p in result.files] == list(ESTIMATE_FILES)
    doc = json.loads(result.files[0].read_text())
    assert doc["objective_spec"] == get_objective("edm").to_dict()
    assert doc["total"] == result.total.value
    with pytest.raises(ValueError, match="--resume"):
        prepare_estimate(settings)


def test_split_bars_count_levels_per_split(capsys):
    bars = SplitBars(["train", "test"], 3, enabled=True)
    for _ in range(6):
        bars(1)
    bars.close()
    err = capsys.readouterr().err
    assert "model loss (train)" in err and "model loss (test)" in err
    assert "3/3" in err and "6/" not in err


def test_sample_refuses_to_overwrite(tmp_path):
    png = tmp_path / "s.png"
    png.write_bytes(b"keep")
    with pytest.raises(ValueError, match="--force"):
        run_sample(SampleSettings(checkpoint=str(tmp_path), out=str(png)))
    assert png.read_bytes() == b"keep"


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("warp-drive")
