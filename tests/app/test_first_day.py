"""Outputs that do not mislead (issue 19): the estimate header states the queries used and the variance
of a class-conditional run, sigma* comes with its uncertainty, and the library's Python warnings reach the
terminal as one clean `warning:` line with a remedy for the command that ran."""

import warnings

import pytest

from lossfloor.app.cli import main
from lossfloor.app.warn import clean_warnings, warning_lines
from lossfloor.data.load import load_dataset
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.floor.estimator import Estimator


def run(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*map(str, args)])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_target_stderr_header_and_the_queries_used(tmp_path, capsys):
    code, out, err = run(["estimate", "--no-progress", "--data", "ring", "--n", 500, "--sigmas",
                          "0.05,0.3,1,3", "--target-stderr", "0.002", "--min-queries", 32, "--out",
                          tmp_path / "e"], capsys)
    assert code == 0, err
    head = out.splitlines()[0]
    assert "--target-stderr 0.002 needs" in head and "queries per level," not in head
    used = OptimalLossCurve.load(tmp_path / "e" / "optimal_loss.json").settings["queries_used"]
    assert f"queries used per level: {min(used):,}–{max(used):,}" in out
    assert "critical sigma (J* > 1% of the data variance, interpolated): " in out and " ± " in out


def test_class_conditional_header_names_the_within_class_variance(tmp_path, capsys):
    code, out, err = run(["estimate", "--no-progress", "--data", "digits", "--n", 300,
                          "--class-conditional", "--sigmas", "0.1,1,10", "--queries", 64, "--out",
                          tmp_path / "e"], capsys)
    assert code == 0, err
    ds = load_dataset("digits", n=300)
    within = Estimator(ds.rows(), labels=ds.labels).data_variance
    head = out.splitlines()[0]
    assert "class-conditional (10 classes)" in head and f"within-class variance {within:.6g}" in head
    assert "(overall 0.29" in head and within < 0.2
    assert "within-class data variance" in out


def test_library_warnings_become_one_line_with_the_commands_remedy(capsys):
    message = ("edm: the sigma grid (4 levels) is too coarse for this total: estimated\n interpolation error "
               "0.1; add levels where lambda p J* changes fastest (OptimalLossCurve.refinement_scores) "
               "or use estimate --total-stderr")
    with clean_warnings("diagnose"):
        warnings.warn(message, stacklevel=1)
        warnings.warn(message, stacklevel=1)  # the same warning twice: printed once
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: edm: the sigma grid")
    assert "UserWarning" not in err and "refinement_scores" not in err and "raise --levels" in err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("x: lower --sigma-min to 0.001 or below", stacklevel=1)
    assert warning_lines(caught, "diagnose --curve") == [
        "warning: x: re-estimate the --curve with `lossfloor estimate --sigma-min 0.001`"]
    assert "budget" in warning_lines(caught, "study")[0]


# -- the small items (issue 19, point 8) ----------------------------------------------------------


def test_objective_names_are_case_insensitive_and_near_misses_get_a_did_you_mean(capsys):
    from lossfloor.core.errors import InputError
    from lossfloor.objective.objective import get_objective

    assert get_objective("EDM").name == "edm" and get_objective("Flow-V-Simple").name == "flow-v-simple"
    assert get_objective("EDM-f-Simple").name == "edm-F-simple"  # F is the registered spelling
    with pytest.raises(InputError, match=r"unknown objective 'edn' \(did you mean 'edm'\?\)"):
        get_objective("edn")
    code, _, err = run(["estimate", "--estimator", "ful"], capsys)
    assert code == 2 and "(did you mean 'full'?)" in err and err.count("\n") == 1


def test_estimate_and_train_say_what_comes_next(tmp_path, capsys):
    code, out, err = run(["estimate", "--no-progress", "--data", "ring", "--n", 200, "--sigmas", "0.1,1,3",
                          "--queries", 32, "--out", tmp_path / "e"], capsys)
    assert code == 0, err
    assert out.splitlines()[-1].startswith(f"next: lossfloor diagnose --checkpoint RUN --curve {tmp_path}")
    code, out, err = run(["train", "--no-progress", "--data", "ring", "--n", 200, "--model", "mlp",
                          "--width", 8, "--depth", 1, "--steps", 2, "--batch-size", 8, "--out",
                          tmp_path / "t"], capsys)
    assert code == 0, err
    assert out.splitlines()[-1].startswith(f"next: lossfloor diagnose --checkpoint {tmp_path / 't'}")


def test_sigterm_of_train_prints_one_line(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "t"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lossfloor", "train", "--no-progress", "--data", "ring",
                             "--n", "200", "--model", "mlp", "--width", "8", "--depth", "1", "--steps",
                             "1000000", "--batch-size", "8", "--checkpoint-every", "5", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert err.count("\n") == 1 and err.startswith("terminated (SIGTERM) at step ")
    assert "--resume" in err


def test_threads_option_sets_torch_threads(tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        code, out, err = run(["--threads", 1, "estimate", "--no-progress", "--data", "ring", "--n", 100,
                              "--sigmas", "0.1,1", "--queries", 8, "--out", tmp_path / "e"], capsys)
        assert code == 0, err
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert run(["--threads", 0, "estimate"], capsys)[0] == 2


def test_sigma_data_preconditions_for_the_data_and_far_data_get_a_note(tmp_path, capsys):
    """--sigma-data (issue 19) sets EDM's preconditioning: the EDM total changes with it (its weight
    1/c_out^2 reads sigma_data) and is recorded in the objective; data whose std is far from the assumed 0.5
    get a one-line note with the value to pass, and passing it silences the note."""
    import json

    import numpy as np

    np.save(tmp_path / "wide.npy", 3.0 * np.random.default_rng(0).standard_normal((200, 2)).astype("float32"))
    base = ["estimate", "--data", tmp_path / "wide.npy", "--num-sigmas", "8", "--queries", "64",
            "--no-progress"]
    code, out, err = run([*base, "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    note = [line for line in out.splitlines() if line.startswith("note: the data's standard deviation")]
    assert len(note) == 1 and "--sigma-data 2.98" in note[0]
    code, out, err = run([*base, "--sigma-data", "3", "--out", tmp_path / "b"], capsys)
    assert code == 0, err
    assert "note: the data's standard deviation" not in out
    a, b = (json.loads((tmp_path / d / "optimal_loss.json").read_text()) for d in "ab")
    assert a["loss"] == b["loss"]  # J* does not depend on the preconditioning
    assert b["objective_spec"]["precond"]["sigma_data"] == 3.0 and a["total"] != b["total"]
    code, _, err = run([*base, "--sigma-data", "0", "--out", tmp_path / "c"], capsys)
    assert code == 2 and "--sigma-data" in err
