"""`lossfloor fit RUNS.csv`: the command end to end, the committed scaling study's fits reproduced from its
points.csv, and malformed CSVs refused with one line, exit 2 and nothing written."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lossfloor.app.cli import main

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "results" / "scaling"


BAD = {"missing column": "run,compute\na,1\nb,2\n", "zero compute": "run,compute,loss\na,1,1\nb,0,1\n",
       "nan loss": "run,compute,loss\na,1,nan\nb,2,1\n", "one run": "run,compute,loss\na,1,3\na,2,2\na,3,1\n",
       "duplicate": "run,compute,loss\na,1,3\nb,2,2\na,1,2.5\n",
       "empty size": "size,run,compute,loss\n1,a,1,3\n,b,2,2\n",
       "ragged sizes": "size,run,compute,loss\n1,a,1,3\n1,a,2,2\n1,a,3,1.5\n1,b,1,3\n1,b,2,2\n2,a,4,2\n"}


def synthetic_csv(path, runs: int = 8, points: int = 4) -> None:
    """Runs over contiguous compute ranges, loss = 0.05 + 4 F^-0.3 with 2% noise (test_runs.py)."""
    rng = np.random.default_rng(0)
    compute = np.geomspace(1e9, 1e13, runs * points)
    noise = rng.standard_normal(len(compute)).tolist()
    lines = ["run,compute,loss"] + [f"r{i // points},{f!r},{0.05 + 4 * f**-0.3 * math.exp(0.02 * noise[i])!r}"
                                    for i, f in enumerate(compute.tolist())]
    path.write_text("\n".join(lines) + "\n")


def run_cli(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_fit_writes_table_json_csv_png(tmp_path, capsys):
    synthetic_csv(tmp_path / "runs.csv")
    out = tmp_path / "out"
    code, stdout, err = run_cli(["fit", tmp_path / "runs.csv", "--floor", "0.05", "--n-boot", "20",
                                 "--out", out], capsys)
    assert code == 0, err
    assert "corrected" in stdout and "rho(corrected) - rho(plain)" in stdout
    report = json.loads((out / "fit.json").read_text())  # strict JSON (no NaN)
    assert report["total"]["fits"]["corrected"]["units"] == 8
    assert (out / "fit.csv").read_text().startswith("run,sigma,compute,loss,floor,on_frontier,fit_plain")
    assert (out / "fit.png").stat().st_size > 1000
    code, _, err = run_cli(["fit", tmp_path / "runs.csv", "--floor", "0.05", "--out", out], capsys)
    assert code == 2 and "--force" in err


@pytest.mark.parametrize("case", ["missing column", "zero compute", "nan loss", "one run", "duplicate",
                                  "empty size", "ragged sizes"])
def test_malformed_csv_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    (tmp_path / "r.csv").write_text(BAD[case])
    out = tmp_path / "out"
    code, _, err = run_cli(["fit", tmp_path / "r.csv", "--floor", "0.1", "--out", out], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "r.csv" in err, err
    assert not out.exists()


def sized_csv(path, sizes: int = 5, seeds: int = 3) -> None:
    """Seeds of several sizes: loss = 0.05 + 4 F^-0.3 e^{effect + noise} + 0.5 / 2^h (a size's plateau)."""
    rng = np.random.default_rng(1)
    lines = ["size,run,steps,flops_per_step,loss"]
    for h in range(sizes):
        for k in range(seeds):
            effect = 0.03 * rng.standard_normal()
            for step in (10, 30, 100, 300, 1000, 3000):
                f = 2.0**h * 1e6 * step
                loss = 0.05 + 4 * f**-0.3 * math.exp(effect + 0.01 * rng.standard_normal()) + 0.5 / 2**h
                lines.append(f"{2**h},s{k},{step},{2.0**h * 1e6!r},{loss!r}")
    path.write_text("\n".join(lines) + "\n")


def test_sizes_with_seeds_fit_the_mean_curves_frontier(tmp_path, capsys):
    sized_csv(tmp_path / "runs.csv")
    out = tmp_path / "out"
    code, stdout, err = run_cli(["fit", tmp_path / "runs.csv", "--floor", "0.05", "--n-boot", "30",
                                 "--out", out], capsys)
    assert code == 0, err
    assert "mean curves" in stdout and "seeds resampled within sizes" in stdout
    total = json.loads((out / "fit.json").read_text())["total"]
    assert total["fits"]["corrected"]["units"] == 15 and total["fits"]["corrected"]["strata"] == 5
    assert len(total["frontier_points"]) >= 3 and set(total["per_size"]) <= {"1", "2", "4", "8", "16"}
    assert {p["size"] for p in total["frontier_points"]} <= set(total["fits"]["frontier_share"])
    # Every row of a frontier point (all seeds of that size and compute) is marked in fit.csv.
    rows = (out / "fit.csv").read_text().splitlines()
    assert sum(r.split(",")[5] == "1" for r in rows[1:]) == 3 * len(total["frontier_points"])
    assert (out / "fit.png").stat().st_size > 1000


def test_floor_options(tmp_path, capsys):
    synthetic_csv(tmp_path / "runs.csv")
    for extra, message in ((["--objective", "edm"], "--objective goes with --curve"),
                           (["--floor", "0.1", "--curve", tmp_path / "runs.csv"], "not both"),
                           ([], "give --floor VALUE or --curve")):
        code, _, err = run_cli(["fit", tmp_path / "runs.csv", "--n-boot", "10", "--out", tmp_path / "o",
                                *extra], capsys)
        assert code == 2 and message in err, err
        assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_reproduces_the_scaling_study_endpoints_from_its_runs(tmp_path, capsys):
    """The study's runs.csv (every cell; size = width, run = seed) refitted by `fit`: the same frontier, the
    same resamples, so the same endpoints and intervals."""
    study = json.loads((STUDY / "scaling.json").read_text())
    code, _, err = run_cli(["fit", STUDY / "runs.csv", "--floor", repr(study["frontier"]["floor"]),
                            "--n-boot", study["setup"]["preset"]["n_boot"], "--seed", study["setup"]["seed"],
                            "--out", tmp_path], capsys)
    assert code == 0, err
    mine = json.loads((tmp_path / "fit.json").read_text())["total"]["fits"]
    ref = study["frontier"]["fits"]
    for form in ("plain", "corrected", "free"):
        for key in ("alpha", "rho", "extrapolation_error", "rho_ci", "extrapolation_error_ci"):
            assert mine[form][key] == pytest.approx(ref[form][key], rel=1e-9, abs=1e-12), (form, key)
    pairs = [(mine["corrected_minus_plain"][s], ref["corrected_minus_plain"][s])
             for s in ("rho", "extrapolation_error")]
    key = "extrapolation_error"
    pairs += [(mine["free_minus_plain"][key], ref["free_minus_plain"][key]),
              (mine["free_floor_minus_jstar"], ref["free_floor_minus_jstar"])]
    for a, b in pairs:
        assert a["value"] == pytest.approx(b["value"], rel=1e-9)
        assert a["ci"] == pytest.approx(b["ci"], rel=1e-9)


@pytest.mark.slow
def test_reproduces_the_scaling_study(tmp_path, capsys):
    """The study's frontier and its point fits from its own points.csv (the seed-mean curves, losses rounded
    to 6 digits there).  The intervals differ by design: `fit` resamples the rows' runs (here the widths'
    mean curves) with the frontier fixed, the study resamples seeds within widths and re-chooses it."""
    study = json.loads((STUDY / "scaling.json").read_text())
    floor = study["frontier"]["floor"]
    code, _, err = run_cli(["fit", STUDY / "points.csv", "--column", "run=width", "--column",
                            "compute=compute_flops", "--column", "loss=train_loss", "--floor", repr(floor),
                            "--n-boot", 50, "--seed", study["setup"]["seed"], "--out", tmp_path], capsys)
    assert code == 0, err
    mine = json.loads((tmp_path / "fit.json").read_text())["total"]
    assert mine["frontier"] == study["frontier"]["points"]
    pairs = [(mine["fits"], study["frontier"]["fits"], ("plain", "corrected", "free"))]
    pairs += [(mine["per_run"][w], study["per_size"][w]["fits"], ("plain", "corrected"))
              for w in study["per_size"]]
    for a, b, forms in pairs:
        for form in forms:
            for key in ("alpha", "beta", "rho", "r2", "extrapolation_error"):
                assert a[form][key] == pytest.approx(b[form][key], rel=2e-3, abs=1e-6), (form, key)
    d = mine["fits"]["corrected_minus_plain"]["rho"]
    e = study["frontier"]["fits"]["corrected_minus_plain"]["rho"]
    assert d["value"] == pytest.approx(e["value"], abs=1e-5)
