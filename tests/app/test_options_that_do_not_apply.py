"""Options checked against what they apply to (issue 20): `train --curve` like `diagnose --curve`, estimate
options refused where their help says they do not apply; one line, exit 2, nothing written."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lossfloor.app.cli import main

RING = ["--data", "ring", "--n", "64"]
TRAIN = ["train", *RING, "--model", "mlp", "--width", "8", "--depth", "1", "--steps", "2",
         "--batch-size", "8", "--log-every", "1", "--no-progress"]


def run(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def refused(args, capsys, out, *phrases):
    code, _, err = run([*args, "--out", out], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    assert not out.exists()


@pytest.fixture(scope="module")
def curves(tmp_path_factory):
    """optimal_loss.json of the training data (ring, n 64), of another draw and of 64-dimensional digits."""
    root = tmp_path_factory.mktemp("curves")
    made = {}
    for name, data in (("ring", RING), ("other", [*RING, "--data-seed", "1"]),
                       ("digits", ["--data", "digits", "--n", "40"])):
        code = 0
        try:
            main(["estimate", *data, "--sigma-min", "0.002", "--sigma-max", "80", "--num-sigmas", "12",
                  "--queries", "16", "--no-progress", "--out", str(root / name)])
        except SystemExit as exit_info:
            code = exit_info.code
        assert code == 0
        made[name] = root / name / "optimal_loss.json"
    return made


def edited(curve, tmp_path, change):
    doc = json.loads(curve.read_text())
    change(doc)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))
    return path


def test_train_accepts_the_matching_curve(curves, tmp_path, capsys):
    code, _, err = run([*TRAIN, "--schedule", "optimal-loss", "--curve", curves["ring"], "--out",
                        tmp_path / "run"], capsys)
    assert code == 0, err


def test_train_critical_fraction_reaches_the_schedule(curves, tmp_path, capsys):
    from lossfloor.train.checkpoint import load_checkpoint

    code, _, err = run([*TRAIN, "--schedule", "optimal-loss", "--curve", curves["ring"],
                        "--critical-fraction", "0.05", "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state.objective.weight.critical_fraction == 0.05
    assert state.objective.time_dist.weight.critical_fraction == 0.05


@pytest.mark.parametrize("extra, phrases", [
    (["--schedule", "native", "--critical-fraction", "0.05"], ["--critical-fraction", "optimal-loss"]),
    (["--schedule", "optimal-loss", "--critical-fraction", "1.5"], ["--critical-fraction"]),
    (["--schedule", "optimal-loss", "--critical-fraction", "nan"], ["--critical-fraction"])])
def test_train_refuses_a_critical_fraction_that_does_not_apply(curves, tmp_path, capsys, extra, phrases):
    refused([*TRAIN, "--curve", curves["ring"], *extra], capsys, tmp_path / "run", *phrases)


@pytest.mark.parametrize("which, phrases", [("other", ["was computed on", "the same name, but other points"]),
                                            ("digits", ["64-dimensional", "dimension 2"])])
def test_train_refuses_a_curve_of_other_data(curves, tmp_path, capsys, which, phrases):
    refused([*TRAIN, "--schedule", "optimal-loss", "--curve", curves[which]], capsys, tmp_path / "run",
            "--curve", *phrases)


def test_train_refuses_a_curve_of_a_subset(curves, tmp_path, capsys):
    args = [*TRAIN, "--n", "32", "--schedule", "optimal-loss-weight", "--curve", curves["ring"]]
    refused(args, capsys, tmp_path / "run", "was computed on")


@pytest.mark.parametrize("change", [
    lambda d: d["loss"].__setitem__(0, -1.0),
    lambda d: d["loss"].__setitem__(-1, 10 * d["data_variance"]),
])
def test_train_refuses_an_implausible_curve(curves, tmp_path, capsys, change):
    path = edited(curves["ring"], tmp_path, change)
    refused([*TRAIN, "--schedule", "optimal-loss", "--curve", path], capsys, tmp_path / "run",
            "not in [0,", "edited.json")


@pytest.mark.parametrize("schedule", ["native", "edm2"])
def test_a_curve_with_any_schedule_puts_the_floor_in_the_logs(curves, tmp_path, capsys, schedule):
    """--curve is used by every schedule (issue 19: the logs show the floor when it is known): log.csv
    carries the objective-weighted excess over it, binned.csv the gap per bin."""
    code, _, err = run([*TRAIN, "--schedule", schedule, "--curve", curves["ring"], "--out", tmp_path / "run"],
                       capsys)
    assert code == 0, err
    assert "excess" in (tmp_path / "run" / "log.csv").read_text().splitlines()[0]
    assert "gap" in (tmp_path / "run" / "binned.csv").read_text().splitlines()[0]


ESTIMATE = ["estimate", *RING, "--sigmas", "0.1,1,10", "--queries", "8", "--no-progress"]


@pytest.mark.parametrize("extra, phrase", [
    (["--min-queries", "4"], "--min-queries applies with --target-stderr"),
    (["--min-queries", "4", "--target-stderr", "0.1", "--estimator", "cdol"], "--min-queries"),
    (["--prune", "--estimator", "cdol"], "--prune applies to the full estimator"),
    (["--prune", "--estimator", "snis"], "--prune"),
    (["--target-stderr", "0.1", "--min-queries", "4", "--control-subset", "65"], "--control-subset 65"),
    (["--sigmas", "1", "--total-stderr", "0.1"], "--total-stderr"),
])
def test_estimate_options_refused_where_they_do_not_apply(tmp_path, capsys, extra, phrase):
    refused([*ESTIMATE, *extra], capsys, tmp_path / "est", phrase)


def test_class_conditional_refuses_a_class_of_one_point(tmp_path, capsys):
    data = tmp_path / "labelled.npz"
    x = np.random.default_rng(0).normal(size=(9, 2)).astype(np.float32)
    np.savez(data, x=x, labels=np.array([0, 0, 0, 0, 1, 1, 1, 1, 2]))
    refused(["estimate", "--data", data, "--sigmas", "0.1,1,10", "--queries", "4", "--class-conditional",
             "--no-progress"], capsys, tmp_path / "est", "--class-conditional", "class 2")


FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FIELDS = ("sigma", "loss", "stderr", "data_variance", "n", "dim", "fingerprint", "settings")
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(), st.text(max_size=4),
                   st.lists(st.floats(), max_size=4), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                      max_size=2))


@given(field=st.sampled_from(FIELDS), value=VALUES)
@FUZZ
def test_fuzz_train_curve_fields(curves, tmp_path_factory, capsys, field, value):
    """A damaged field of the curve: refused in one line (exit 2) and nothing written; never a traceback."""
    case = tmp_path_factory.mktemp("fuzzcurve")
    path = edited(curves["ring"], case, lambda d: d.__setitem__(field, value))
    code, _, err = run([*TRAIN, "--schedule", "optimal-loss", "--curve", path, "--out", case / "run"], capsys)
    if code == 0:  # a harmless change (e.g. settings): the run must still have been the checked one
        return
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (field, value, err)
    assert not (case / "run").exists()
