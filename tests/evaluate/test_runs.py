"""`lossfloor fit`'s library part: the runs CSV (schema, checks) and the fits of synthetic runs with a known
exponent and floor."""

import math

import numpy as np
import pytest

from lossfloor.core.errors import InputError
from lossfloor.core.stats import Estimate
from lossfloor.evaluate.runs import Columns, FitOptions, fit_runs, json_ready, point_rows, read_runs

ALPHA, BETA, FLOOR = -0.3, 4.0, 0.05


def synthetic_csv(path, runs: int = 8, points: int = 4, seed: int = 0, sigma_rows: bool = False) -> None:
    """Runs covering contiguous compute ranges; loss = FLOOR + BETA F^ALPHA exp(point + run noise)."""
    rng = np.random.default_rng(seed)
    compute = np.geomspace(1e9, 1e13, runs * points)
    lines = ["run,parameters,steps,flops_per_step,loss,notes" + (",sigma" if sigma_rows else "")]
    for r in range(runs):
        run_noise = 0.02 * rng.standard_normal()
        for k in range(points):
            f = float(compute[r * points + k])
            loss = FLOOR + BETA * f**ALPHA * math.exp(run_noise + 0.02 * rng.standard_normal())
            steps = 1000 * (k + 1)
            lines.append(f"r{r},{1000 * (r + 1)},{steps},{f / steps!r},{loss!r},ignored"
                         + ("," if sigma_rows else ""))
            if sigma_rows:
                lines.append(f"r{r},{1000 * (r + 1)},{steps},{f / steps!r},{2 * loss!r},ignored,0.5")
    path.write_text("\n".join(lines) + "\n")


def test_synthetic_runs_recover_exponent_and_floor_within_intervals(tmp_path):
    synthetic_csv(tmp_path / "runs.csv")
    runs = read_runs(tmp_path / "runs.csv")
    assert len(set(runs.run)) == 8 and np.allclose(runs.compute, np.geomspace(1e9, 1e13, 32))
    report = fit_runs(runs, Estimate(FLOOR, 0.0), opts=FitOptions(n_boot=200, seed=0))
    fits = report["total"]["fits"]
    assert ALPHA in percentile_interval(fits["corrected"]["alpha_ci"])
    assert ALPHA in percentile_interval(fits["free"]["alpha_ci"])
    assert FLOOR in percentile_interval(fits["free"]["floor_ci"])
    assert abs(fits["corrected"]["alpha"] - ALPHA) < 0.02
    assert fits["corrected"]["units"] == 8  # whole runs resampled
    assert math.isfinite(fits["plain"]["extrapolation_error"])
    assert report["runs"][0] == {"run": "r0", "rows": 4, "parameters": 1000.0, "compute": [1e9, pytest.approx(
        np.geomspace(1e9, 1e13, 32)[3])]}
    rows = point_rows(runs, report)
    assert len(rows) == 32 and {"fit_plain", "fit_corrected", "fit_free", "on_frontier"} <= set(rows[0])
    json_ready(report)  # strict JSON: no '_' entries, no nan


def percentile_interval(ci):
    lo, hi = ci
    return type("I", (), {"__contains__": lambda self, v: lo <= v <= hi})()


def test_sigma_rows_are_fitted_against_the_curve_floor(tmp_path):
    synthetic_csv(tmp_path / "runs.csv", sigma_rows=True)
    runs = read_runs(tmp_path / "runs.csv")
    assert runs.levels == [0.5] and len(runs.select(None)) == 32
    with pytest.raises(InputError, match="--curve"):
        fit_runs(runs, Estimate(FLOOR, 0.0), None, FitOptions(n_boot=20))
    report = fit_runs(runs, Estimate(FLOOR, 0.0), lambda s: Estimate(2 * FLOOR, 0.0), FitOptions(n_boot=20))
    level = report["per_sigma"][0]
    assert level["sigma"] == 0.5 and level["floor"] == 2 * FLOOR
    assert abs(level["fits"]["corrected"]["alpha"] - ALPHA) < 0.03


def test_column_renames(tmp_path):
    (tmp_path / "r.csv").write_text("width,compute_flops,train_loss\n8,1e9,2\n8,2e9,1.5\n16,4e9,1.2\n")
    runs = read_runs(tmp_path / "r.csv", Columns.parse(["run=width", "compute=compute_flops",
                                                        "loss=train_loss"]))
    assert runs.run.tolist() == ["8", "8", "16"] and runs.loss.tolist() == [2, 1.5, 1.2]
    with pytest.raises(InputError, match="FIELD=HEADER"):
        Columns.parse(["width"])


BAD = {
    "missing column": ("run,compute\na,1\nb,2\n", "missing column(s) loss"),
    "missing compute": ("run,loss\na,1\nb,2\n", "compute (or steps and flops_per_step)"),
    "zero compute": ("run,compute,loss\na,1,1\nb,0,1\n", "line 3: compute must be positive"),
    "negative compute": ("run,compute,loss\na,-1,1\nb,2,1\n", "line 2: compute must be positive"),
    "nan loss": ("run,compute,loss\na,1,nan\nb,2,1\n", "line 2: loss is nan"),
    "text": ("run,compute,loss\na,1,low\nb,2,1\n", "'low' is not a number"),
    "one run": ("run,compute,loss\na,1,3\na,2,2\na,3,1\n", "one run ('a')"),
    "duplicate": ("run,compute,loss\na,1,3\nb,2,2\na,1,2.5\n", "lines 2 and 4: run 'a' has two rows"),
    "empty": ("", "empty file"),
    "header only": ("run,compute,loss\n", "no data rows"),
    "empty run": ("run,compute,loss\n,1,3\nb,2,2\n", "empty run id"),
    "short row": ("run,compute,loss\na,1\nb,2,2\n", "3 columns expected"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_csv(tmp_path, case):
    text, message = BAD[case]
    (tmp_path / "r.csv").write_text(text)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_runs(tmp_path / "r.csv")


def test_too_few_frontier_points(tmp_path):
    (tmp_path / "r.csv").write_text("run,compute,loss\na,1,3\nb,2,2\nb,3,2.5\n")
    with pytest.raises(InputError, match="frontier .* has 2 point"):
        fit_runs(read_runs(tmp_path / "r.csv"), Estimate(0.1, 0.0), opts=FitOptions(n_boot=10))
