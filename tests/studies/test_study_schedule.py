"""The schedule study: report arithmetic (paired 95% t intervals), a quick end-to-end run with per-cell
resume, and the command line."""

import json
import math

import pytest
import scipy.stats

from lossfloor.app.cli import main
from lossfloor.studies.schedule import run as study


def fake(objective, schedule, seed, fd, bpd=1.0, gap=0.1):
    return {"objective": objective, "schedule": schedule, "seed": seed, "fd": fd, "bits_per_dim": bpd,
            "gap_edm": gap, "gap_edm_se": 0.0}


def test_aggregate_pairs_seeds_and_uses_a_t_interval():
    native = [10.0, 12.0, 11.0]
    ours = [9.0, 10.5, 10.9]
    results = [fake("flow", "native", s, v) for s, v in enumerate(native)]
    results += [fake("flow", "optimal-loss", s, v) for s, v in enumerate(ours)]
    rows = {r["schedule"]: r for r in study.aggregate(results)}
    diffs = [o - n for o, n in zip(ours, native, strict=True)]
    mean = sum(diffs) / 3
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2 / 3)
    row = rows["optimal-loss"]
    assert row["fd_diff"] == pytest.approx(mean)
    assert row["fd_diff_ci95"] == pytest.approx(scipy.stats.t.ppf(0.975, 2) * se)
    assert row["fd_rel_diff"] == pytest.approx(mean / 11.0)
    assert rows["native"]["fd_diff"] == 0.0
    assert [r["schedule"] for r in study.aggregate(results[::-1])] == ["native", "optimal-loss"]


def test_paired_t_p_matches_scipy_and_holm_matches_its_definition():
    native = [10.0, 12.0, 11.0, 10.5, 11.5, 12.5]
    ours = [9.0, 10.5, 10.9, 9.8, 10.0, 12.1]
    results = [fake("edm", "native", s, v) for s, v in enumerate(native)]
    results += [fake("edm", "min-snr", s, v) for s, v in enumerate(ours)]
    results += [fake("edm", "logit-normal", s, v + 0.3 * (-1) ** s) for s, v in enumerate(native)]
    rows = {r["schedule"]: r for r in study.aggregate(results)}
    expected = scipy.stats.ttest_rel(ours, native).pvalue
    assert rows["min-snr"]["fd_p"] == pytest.approx(expected, rel=1e-9)
    assert math.isnan(rows["native"]["fd_p"]) and math.isnan(rows["native"]["fd_p_holm"])
    p = sorted([rows["min-snr"]["fd_p"], rows["logit-normal"]["fd_p"]])
    adjusted = sorted([rows["min-snr"]["fd_p_holm"], rows["logit-normal"]["fd_p_holm"]])
    assert adjusted == pytest.approx([min(1, 2 * p[0]), min(1, max(2 * p[0], p[1]))])
    # By hand: 4 p-values, step-down multipliers 4, 3, 2, 1 with the running maximum; nan stays out.
    assert study.holm([0.01, 0.04, math.nan, 0.03, 0.5]) == pytest.approx(
        [0.04, 0.09, math.nan, 0.09, 0.5], nan_ok=True)
    # Schedules outside an objective's default list sort after native, the optimal-loss family first.
    order = [r["schedule"] for r in study.aggregate(results[::-1])]
    assert order == ["native", "logit-normal", "min-snr"]


def test_powered_preset_declares_its_family_and_old_cells_still_match():
    powered = study.PRESETS["powered"]
    assert powered.seeds >= 6 and powered.steps == 2000 and powered.schedules == study.POWERED_SCHEDULES
    assert set(study.POWERED_SCHEDULES) == {"native", "optimal-loss", "min-snr", "edm2-learned",
                                            "logit-normal"}
    # Cells written before the horizon existed ran with 1: they match the presets that keep it.
    assert study.LEGACY_SETTINGS == {"horizon": 1.0, "critical_fraction": 0.01, "first_seed": 0}
    assert study.PRESETS["long"].horizon == 1.0 and study.PRESETS["long"].critical_fraction == 0.01


def test_unknown_preset_or_objective_is_refused_before_writing(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["study", "schedule", "--objectives", "edm,nope", "--out", str(tmp_path / "x"), "--no-progress"])
    assert err.value.code == 2 and "nope" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="preset"):
        study.run_schedule_study("nope", tmp_path / "y")


@pytest.mark.slow
def test_quick_study_runs_reports_and_resumes_per_cell(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "SCHEDULE_STUDY", {"flow": ("native", "optimal-loss")})
    out = tmp_path / "schedule"
    report = study.run_schedule_study("quick", out, progress=False)
    rows = (out / "cells.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * study.PRESETS["quick"].seeds
    assert {r["schedule"] for r in report["rows"]} == {"native", "optimal-loss"}
    for r in report["results"]:
        assert math.isfinite(r["fd"]) and math.isfinite(r["bits_per_dim"]) and math.isfinite(r["gap_edm"])
        assert len(r["gap"]) == len(r["sigma"])
    history = next(r for r in report["results"] if r["schedule"] == "optimal-loss")["density_history"]
    assert len(history["density"]) == 1 + study.PRESETS["quick"].steps // study.PRESETS["quick"].every
    for name in ("summary.md", "summary.json", "gaps.csv", "adaptive_density.png", "gaps.png", "samples.png"):
        assert (out / name).stat().st_size > 0
    # A rerun reuses every finished cell (no training: the files are not rewritten).
    cell = out / "cells" / "flow_native_seed0.json"
    before = cell.stat().st_mtime_ns
    again = study.run_schedule_study("quick", out, progress=False)
    assert cell.stat().st_mtime_ns == before
    assert json.loads(cell.read_text())["fd"] == again["results"][0]["fd"]
