"""`lossfloor estimate`: outputs, resume, and bad input (one stderr line, exit 2, nothing written)."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from lossfloor.app.cli import main
from lossfloor.app.common import SIGMA_GRID, parse_sigmas
from lossfloor.data.load import load_dataset
from lossfloor.floor.config import EstimatorConfig
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.floor.estimator import Estimator
from lossfloor.objective.objective import get_objective, objective_names

SIGMAS = "0.05,0.3,1,3"
JSON_KEYS = {"sigma", "loss", "stderr", "data_variance", "n", "dim", "estimator", "objective", "total",
             "total_stderr", "settings", "fingerprint", "critical_sigma", "critical_sigma_error",
             "critical_sigma_mc_error", "data", "scaling"}


def run(args, capsys):
    """Run the command in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", "--no-progress", *map(str, args)])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


@pytest.fixture
def points(tmp_path) -> Path:
    path = tmp_path / "points.npy"
    np.save(path, np.random.default_rng(0).normal(size=(60, 3)))
    return path


@pytest.mark.slow
def test_happy_path_writes_json_csv_png(tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run(["--data", "ring", "--n", 300, "--sigmas", SIGMAS, "--objective", "flow",
                           "--out", out], capsys)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [f"optimal_loss.{ext}" for ext in ("csv", "json", "png")]
    doc = json.loads((out / "optimal_loss.json").read_text())
    assert JSON_KEYS <= doc.keys()
    assert doc["estimator"] == "full" and doc["objective"] == "flow" and (doc["n"], doc["dim"]) == (300, 2)
    assert doc["sigma"] == [0.05, 0.3, 1.0, 3.0] and doc["scaling"]["kind"] == "standardise"
    dataset = load_dataset("ring", n=300)
    assert doc["fingerprint"] == dataset.fingerprint == doc["data"]["fingerprint"]
    # The numbers are exactly the library's, with the default of one query per point.
    direct = Estimator(dataset.rows(), EstimatorConfig(queries=300)).curve(doc["sigma"], seed=0)
    assert doc["loss"] == direct.loss.tolist() and doc["stderr"] == direct.stderr.tolist()
    total = OptimalLossCurve.load(out / "optimal_loss.json").total(get_objective("flow"))
    assert (doc["total"], doc["total_stderr"]) == (total.value, total.stderr)
    csv = np.loadtxt(out / "optimal_loss.csv", delimiter=",", skiprows=1)
    assert np.array_equal(csv[:, :3], np.array([doc["sigma"], doc["loss"], doc["stderr"]]).T)
    assert (out / "optimal_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{total.value:.6g}" in stdout and "J*/var" in stdout


def test_default_grid_covers_every_preset():
    grid = parse_sigmas(None, None, None, None)
    assert len(grid) == SIGMA_GRID[2] and (grid[0], grid[-1]) == pytest.approx(SIGMA_GRID[:2])
    curve = OptimalLossCurve(grid, np.full(len(grid), 0.1), np.zeros(len(grid)), 0.1, 10, 1)
    for name in objective_names():
        assert np.isfinite(curve.total(get_objective(name)).value)  # raises if p(sigma) leaks off the grid


@pytest.mark.slow
def test_interrupted_run_resumes_without_recomputing(tmp_path, capsys, monkeypatch, points):
    args = ["--data", points, "--sigmas", "0.1,0.3,1,3,10", "--queries", 40, "--seed", 3]
    assert run([*args, "--out", tmp_path / "whole"], capsys)[0] == 0
    whole = json.loads((tmp_path / "whole" / "optimal_loss.json").read_text())

    computed = []
    original = Estimator.level

    def interrupted(self, sigma, seed=0, progress=None):
        if len(computed) == 2:
            raise KeyboardInterrupt
        computed.append(sigma)
        return original(self, sigma, seed, progress)

    monkeypatch.setattr(Estimator, "level", interrupted)
    part = tmp_path / "part"
    code, _, stderr = run([*args, "--out", part], capsys)
    assert code == 130 and "interrupted" in stderr
    assert [p.name for p in part.iterdir()] == ["optimal_loss.partial.json"]
    assert json.loads((part / "optimal_loss.partial.json").read_text())["sigma"] == [0.1, 0.3]

    computed.clear()
    monkeypatch.setattr(Estimator, "level", lambda self, s, seed=0, progress=None:
                        computed.append(s) or original(self, s, seed, progress))
    code, stdout, _ = run([*args, "--out", part, "--resume"], capsys)
    assert code == 0 and computed == [1.0, 3.0, 10.0] and "2 already done" in stdout
    resumed = json.loads((part / "optimal_loss.json").read_text())
    assert not (part / "optimal_loss.partial.json").exists()
    for key in ("sigma", "loss", "stderr", "total", "total_stderr", "fingerprint"):
        assert resumed[key] == whole[key]

    computed.clear()  # resuming a finished run recomputes nothing and gives the same numbers
    assert run([*args, "--out", part, "--resume"], capsys)[0] == 0 and computed == []
    assert json.loads((part / "optimal_loss.json").read_text())["loss"] == whole["loss"]


def test_existing_results_need_resume_or_force(tmp_path, capsys, points):
    out = tmp_path / "out"
    args = ["--data", points, "--sigmas", "0.1,1", "--out", out]
    assert run(args, capsys)[0] == 0
    before = snapshot(out)
    code, _, stderr = run(args, capsys)
    assert code == 2 and "--resume" in stderr and snapshot(out) == before
    code, _, stderr = run([*args, "--resume", "--seed", 1], capsys)
    assert code == 2 and "different settings (seed 0 (now 1))" in stderr and snapshot(out) == before
    assert run([*args, "--force", "--seed", 1], capsys)[0] == 0
    assert json.loads((out / "optimal_loss.json").read_text())["settings"]["seed"] == 1


BAD_INPUTS = {
    "nan": (["--data", "{nan}"], "NaN or Inf"),
    "one point": (["--data", "{one}"], "at least 2 data points"),
    "sigma <= 0": (["--sigmas", "0.1,0"], "1e-08<=x<=100000000.0"),
    "sigma not a number": (["--sigmas", "0.1,x"], "not a valid float"),
    "sigma-min <= 0": (["--sigma-min", "-1"], "'--sigma-min': -1.0 is not in the range"),
    "both grids": (["--sigmas", "1", "--num-sigmas", "3"], "not both"),
    "L > N": (["--estimator", "cdol", "--subset", "61"], "exceeds the dataset size N=60"),
    "unknown data": (["--data", "no-such-data"], "unknown dataset"),
    "unknown objective": (["--objective", "edm-foo-simple"], "unknown target"),
    "unknown estimator": (["--estimator", "magic"], "magic"),
    "grid misses the objective": (["--sigma-min", "1", "--sigma-max", "2", "--objective", "flow"], "widen"),
    "missing fashion": (["--data", "fashion-mnist", "--data-dir", "{empty}"], "apt-get install dataset-"),
    "out is under a file": (["--out", "{file}/out"], "not a folder"),
    "out not writable": (["--out", "/proc/lossfloor-out"], "cannot write"),
    "no labels": (["--class-conditional"], "has no labels"),
    "flip of points": (["--flip"], "--flip needs images"),
    "C without cdol": (["--C", "2"], "cdol only"),
    "control subset alone": (["--control-subset", "16"], "--target-stderr and --min-queries"),
    "control subset < 2": (["--control-subset", "1"], "'--control-subset': 1 is not in the range"),
    "queries twice": (["--queries", "5", "--queries-per-point", "1"], "not both"),
    "resume and force": (["--force"], "--resume or --force"),
    "no cuda": (["--device", "cuda"], "CUDA"),
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """(points.npy, an --out folder holding a finished run on it), made once."""
    folder = tmp_path_factory.mktemp("finished")
    np.save(folder / "points.npy", np.random.default_rng(0).normal(size=(60, 3)))
    with pytest.raises(SystemExit):
        main(["estimate", "--no-progress", "--data", str(folder / "points.npy"), "--sigmas", "0.1,1",
              "--out", str(folder / "out")])
    return folder / "points.npy", folder / "out"


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, tmp_path, capsys, finished_run):
    args, message = BAD_INPUTS[case]
    nan = np.zeros((5, 2))
    nan[2, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "one.npy", np.zeros((1, 2)))
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    paths = {k: tmp_path / k for k in ("nan", "one", "empty", "file")}
    paths["nan"], paths["one"] = tmp_path / "nan.npy", tmp_path / "one.npy"
    args = [a.format(**paths) for a in args]
    points, used = finished_run
    if "--data" not in args:
        args = ["--data", str(points), *args]
    # A fresh --out is not created; an existing one with results is left byte for byte (with --resume).
    fresh = tmp_path / "fresh"
    before = snapshot(used)
    assert before
    for out in (fresh, used):
        extra = [] if "--out" in args else ["--out", out, "--resume"]
        code, stdout, stderr = run([*args, *extra], capsys)
        assert code == 2, stdout + stderr
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not fresh.exists() and snapshot(used) == before


def test_class_conditional_and_flip(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, _ = run(["--data", "digits", "--n", 60, "--flip", "--class-conditional", "--sigmas", "0.5,2",
                      "--out", out], capsys)
    assert code == 0
    doc = json.loads((out / "optimal_loss.json").read_text())
    assert doc["n"] == 120 and doc["data"]["flip"] and doc["settings"]["class_conditional"]
    assert doc["scaling"]["formula"] == "x / 8 - 1"


@pytest.mark.slow
def test_console_script_reports_errors_on_one_line(tmp_path):
    script = Path(sys.executable).with_name("lossfloor")
    proc = subprocess.run([script, "estimate", "--sigmas", "-1", "--out", tmp_path / "o"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("error: Invalid value for '--sigmas': '-1': -1.0 is not in the range "
                           "1e-08<=x<=100000000.0.\n")
    assert not (tmp_path / "o").exists()


@pytest.mark.fashion
def test_fashion_mnist_subsample(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, _ = run(["--data", "fashion-mnist", "--n", 500, "--sigmas", "0.5,5", "--out", out], capsys)
    assert code == 0
    doc = json.loads((out / "optimal_loss.json").read_text())
    assert (doc["n"], doc["dim"]) == (500, 784) and doc["scaling"]["formula"] == "x / 127.5 - 1"


def test_plotted_weight_density_integrates_to_the_objectives_mean_weight():
    from lossfloor.plots.common import weight_density

    # EDM: lambda = 1/sigma_data^2 + 1/sigma^2, ln sigma ~ N(-1.2, 1.2^2): E[lambda] = 4 + e^(2.4 + 2.88).
    sigma = np.geomspace(1e-6, 1e5, 20001)
    mean_weight = np.trapezoid(weight_density(get_objective("edm"), sigma), np.log(sigma))
    assert mean_weight == pytest.approx(4 + np.exp(2.4 + 2.88), rel=1e-6)
    # DDPM's atoms are binned: the binned mass is the sum of lambda / T over the atoms inside the range.
    ddpm = get_objective("ddpm")
    sigma = np.geomspace(0.05, 50, 200001)
    atoms = ddpm.atoms().numpy()
    inside = (atoms >= sigma[0]) & (atoms < sigma[-1])
    expected = ddpm.x0_weight(ddpm.atoms()).numpy()[inside].sum() / len(atoms)
    binned = np.trapezoid(weight_density(ddpm, sigma), np.log(sigma))
    assert binned == pytest.approx(expected, rel=1e-3)


def test_progress_bars_have_a_total(points, tmp_path, capsys):
    args = ["estimate", "--data", points, "--sigmas", "0.1,1", "--queries", 20]
    with pytest.raises(SystemExit):
        main([str(a) for a in [*args, "--out", tmp_path / "a"]])
    assert "40/40" in capsys.readouterr().err  # 2 levels x 20 queries
    with pytest.raises(SystemExit):
        main([str(a) for a in [*args, "--target-stderr", "0.5", "--out", tmp_path / "b"]])
    err = capsys.readouterr().err
    assert "2/2" in err and "level" in err  # adaptive: the queries per level are not known ahead


def test_every_command_and_option_is_described():
    import click
    from click.testing import CliRunner

    from lossfloor.app.cli import cli

    def commands(group, prefix=()):
        for name, cmd in group.commands.items():
            yield (*prefix, name), cmd
            if isinstance(cmd, click.Group):
                yield from commands(cmd, (*prefix, name))

    for path, cmd in commands(cli):
        assert cmd.short_help, path  # click lists a short_help whole; a first line it would cut with "..."
        for param in cmd.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help and param.help.strip(), (path, param.name)
    for group in (cli, cli.commands["study"]):
        listing = CliRunner().invoke(group, ["--help"]).output.split("Commands:")[1]
        assert "..." not in listing and "…" not in listing, listing


def test_two_dimensional_toys_default_to_a_size_that_finishes():
    """The toys' default N keeps `lossfloor estimate --data ring` at about a minute (issue 14): the work
    is N x min(N, 4096) queries x 32 levels; 10,000 points took 56 s of CPU on the 2-core machine."""
    from lossfloor.data.toys import TOY_SIZE

    assert len(load_dataset("ring")) == TOY_SIZE <= 10_000


@pytest.mark.parametrize("args", [["--target-stderr", "1e-9", "--queries", "2"], ["--total-stderr", "1e-12"]],
                         ids=["level", "total"])
def test_an_unreachable_stderr_target_is_bounded_and_said(tmp_path, capsys, args):
    """Issue 20: --target-stderr 1e-9 --queries 2 on 30 points ran for minutes in rounds of two queries up to
    the 2^20 cap, and --total-stderr 1e-12 for 1-2 minutes; now each level (or the total) stops once the
    measured spread shows the target is out of reach, and says so."""
    np.save(tmp_path / "p.npy", np.random.default_rng(0).standard_normal((30, 4)).astype("float32"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run(["--data", tmp_path / "p.npy", *args, "--num-sigmas", "4",
                            "--out", tmp_path / "out"], capsys)
    said = err + " ".join(str(w.message) for w in caught)
    assert code == 0 and "more than the cap" in said
    used = json.loads((tmp_path / "out" / "optimal_loss.json").read_text())["settings"]["queries_used"]
    assert max(used) <= 1024
