"""Kill -9 and resume of `lossfloor train`: the same weights, EMA, optimizer state and log bytes as an
uninterrupted run, wherever the kill lands; NaN stops; logs never duplicated or rewritten needlessly."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lossfloor.app.cli import main

# A tiny run: 40 steps, logs every 5, checkpoints every 15 (not aligned with the logs) and at the end.
TRAIN = ["train", "--data", "ring", "--n", "256", "--model", "mlp", "--width", "16", "--depth", "1",
         "--steps", "40", "--batch-size", "16", "--log-every", "5", "--checkpoint-every", "15",
         "--warmup", "4", "--no-progress"]
LOGS = ("log.csv", "binned.csv")

# Runs `lossfloor train` in a fresh process that SIGKILLs itself at a chosen point:
#   step N            just before step N+1 (the checkpoint of step 15 exists iff N >= 15)
#   log N             halfway through writing the N-th log block (a partial line is left behind)
#   checkpoint N      during the N-th checkpoint write, after its temporary file, before the rename
DRIVER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from lossfloor.train import trainer as training
    from lossfloor.app.cli import main

    where, at = sys.argv[1], int(sys.argv[2])
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    calls = {"n": 0}

    if where == "step":
        step = training.Trainer.train_step
        def train_step(self):
            if self.step == at:
                die()
            return step(self)
        training.Trainer.train_step = train_step
    elif where == "log":
        append = training.append_csv
        def append_csv(path, rows):
            calls["n"] += 1
            if calls["n"] == at:
                with open(path, "a", newline="") as f:
                    f.write("%d,0.12" % rows[0]["step"])  # part of a row, no line end
                    f.flush()
                die()
            append(path, rows)
        training.append_csv = append_csv
    elif where == "checkpoint":
        save = training.atomic_torch_save
        def atomic_torch_save(obj, path):
            calls["n"] += 1
            if calls["n"] == at:
                (path.parent / f".{path.name}.killed.tmp").write_bytes(b"half a checkpoint")
                die()
            save(obj, path)
        training.atomic_torch_save = atomic_torch_save
    main(sys.argv[3:])
""")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run(args) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code


def state(out) -> dict:
    return torch.load(out / "checkpoint.pt", weights_only=True)


def assert_same_run(out, reference, steps=40):
    a, b = state(out), state(reference)
    assert a["step"] == b["step"] == steps
    for key in ("net", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    for (i, sa), (j, sb) in zip(opt_a.items(), opt_b.items(), strict=True):
        assert i == j and sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert torch.equal(a["generator"], b["generator"])
    for name in LOGS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    assert run([*TRAIN, "--out", out]) == 0
    return out


def test_reference_logs_are_plain(reference):
    for name in LOGS:
        raw = (reference / name).read_bytes()
        assert b"\r" not in raw and raw.endswith(b"\n")
    steps = [int(line.split(b",")[0]) for line in (reference / "log.csv").read_bytes().splitlines()[1:]]
    assert steps == list(range(5, 41, 5))


# Kill points, drawn from a seeded generator: steps before and after the first checkpoint (step 15), a
# log block (8 log.csv + 8 binned.csv appends in all) and a checkpoint write (steps 15, 30, 40).
_rng = np.random.default_rng(10)
KILLS = [("step", int(_rng.integers(1, 15))), ("step", int(_rng.integers(16, 40))),
         ("log", int(_rng.integers(2, 16))), ("checkpoint", int(_rng.integers(1, 4)))]


@pytest.mark.slow
@pytest.mark.parametrize("where, at", KILLS, ids=[f"{w}-{a}" for w, a in KILLS])
def test_kill_9_then_resume_equals_uninterrupted(tmp_path, reference, where, at):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", DRIVER, where, str(at), *TRAIN, "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env=ONE_THREAD_ENV)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert run([*TRAIN, "--out", out, "--resume"]) == 0
    assert_same_run(out, reference)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary files left


@pytest.mark.slow
def test_kill_9_from_outside_at_a_seeded_time_then_resume(tmp_path, reference):
    """A real SIGKILL from another process, a seeded delay after training has started (its first log row):
    wherever it lands, resume is exact."""
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "lossfloor", *TRAIN, "--steps", "400", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ONE_THREAD_ENV)
    try:
        while not (out / "log.csv").exists() and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(np.random.default_rng(3).uniform(0.0, 0.5))
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert run([*TRAIN, "--steps", "400", "--out", out, "--resume"]) == 0
    reference_400 = tmp_path / "reference"
    assert run([*TRAIN, "--steps", "400", "--out", reference_400]) == 0
    assert_same_run(out, reference_400, steps=400)


def test_resume_without_a_checkpoint_does_not_duplicate_rows(tmp_path, reference):
    """Killed before its first checkpoint: the logs hold rows, but --resume must start over cleanly."""
    out = tmp_path / "run"
    assert run([*TRAIN, "--out", out, "--steps", "10", "--checkpoint-every", "100"]) == 0
    (out / "checkpoint.pt").unlink()  # as if killed between the step-10 log and its checkpoint
    with open(out / "log.csv", "a", newline="") as f:
        f.write("15,0.")  # and mid-row
    assert run([*TRAIN, "--out", out, "--resume"]) == 0
    assert_same_run(out, reference)


@pytest.mark.slow
def test_resume_of_a_finished_run_refuses_without_touching_the_logs(tmp_path, reference, capsys):
    out = tmp_path / "run"
    for name in (*LOGS, "checkpoint.pt"):
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_bytes((reference / name).read_bytes())
    before = {name: ((out / name).read_bytes(), (out / name).stat().st_mtime_ns) for name in LOGS}
    capsys.readouterr()
    assert run([*TRAIN, "--out", out, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "already at step 40" in err and len(err.strip().splitlines()) == 1
    assert before == {name: ((out / name).read_bytes(), (out / name).stat().st_mtime_ns) for name in LOGS}


def test_old_crlf_logs_are_normalised_on_resume(tmp_path, reference):
    """Logs of older versions ended lines in CRLF; a resume must not leave a mix."""
    out = tmp_path / "run"
    assert run([*TRAIN, "--out", out, "--steps", "20"]) == 0  # checkpoints at 15 and 20
    for name in LOGS:
        (out / name).write_bytes((out / name).read_bytes().replace(b"\n", b"\r\n"))
    assert run([*TRAIN, "--out", out, "--resume"]) == 0
    assert_same_run(out, reference)


# -- NaN / Inf ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys, bad):
    from lossfloor.train import trainer as training

    losses = training.Trainer.losses

    def poisoned(self, x0, t, eps):
        loss, x0_loss = losses(self, x0, t, eps)
        return (loss * bad if self.step >= 20 else loss), x0_loss  # step 21 is the first bad one

    out = tmp_path / "run"
    monkeypatch.setattr(training.Trainer, "losses", poisoned)
    assert run([*TRAIN, "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged at step 21" in err[0] and "keeps step 15" in err[0], err
    ckpt = state(out)
    assert ckpt["step"] == 15
    assert all(torch.isfinite(v).all() for v in ckpt["net"].values())
    assert all(torch.isfinite(v).all() for v in ckpt["ema"].values())
    assert b"nan" not in (out / "log.csv").read_bytes() and b"inf" not in (out / "log.csv").read_bytes()


def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch, capsys):
    """A finite loss whose update leaves NaN weights (the loss is computed before the update)."""
    from lossfloor.train import trainer as training

    step = training.Trainer.train_step

    def poisoned(self):
        value = step(self)
        if self.step == 30:
            with torch.no_grad():
                next(self.net.parameters()).fill_(float("nan"))
        return value

    out = tmp_path / "run"
    monkeypatch.setattr(training.Trainer, "train_step", poisoned)
    assert run([*TRAIN, "--out", out]) == 2
    err = capsys.readouterr().err
    assert "diverged at step 30" in err and "weights" in err and "keeps step 15" in err
    assert state(out)["step"] == 15


def test_divergence_before_any_checkpoint(tmp_path, monkeypatch, capsys):
    from lossfloor.train import trainer as training

    monkeypatch.setattr(training.Trainer, "losses",
                        lambda self, x0, t, eps: (torch.full((len(x0),), float("nan"), requires_grad=True),
                                                  torch.zeros(len(x0), dtype=torch.float64)))
    assert run([*TRAIN, "--out", tmp_path / "run"]) == 2
    err = capsys.readouterr().err
    assert "diverged at step 1" in err and "no checkpoint was written" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
