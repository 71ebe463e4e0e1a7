"""`lossfloor train / sample / diagnose`: outputs, resume, and bad input (one stderr line, exit 2,
nothing written)."""

import json
import re

import numpy as np
import pytest
import torch

from lossfloor.app.cli import main
from lossfloor.train.checkpoint import load_checkpoint

TRAIN = ["train", "--no-progress", "--data", "ring", "--n", "400", "--objective", "edm", "--model", "mlp",
         "--width", "32", "--depth", "1", "--batch-size", "32", "--log-every", "5",
         "--checkpoint-every", "10"]


def run(args, capsys):
    """Run the command in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def assert_usage_error(result, match: str):
    code, _, err = result
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and match in err, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    with pytest.raises(SystemExit) as exit_info:
        main([*TRAIN, "--steps", "20", "--out", str(out)])
    assert exit_info.value.code == 0
    return out


def test_train_writes_checkpoint_and_logs(trained):
    assert sorted(p.name for p in trained.iterdir()) == ["binned.csv", "checkpoint.pt", "log.csv"]
    ckpt = load_checkpoint(trained / "checkpoint.pt")
    assert (ckpt.step, ckpt.objective_name, ckpt.model.kind) == (20, "edm", "mlp")
    assert ckpt.data["load"] == {"name": "ring", "data_dir": None, "n": 400, "seed": 0, "flip": False}
    assert [line.split(",")[0] for line in (trained / "log.csv").read_text().splitlines()] == \
        ["step", "5", "10", "15", "20"]


def test_resume_continues_the_run(trained, tmp_path, capsys):
    out = tmp_path / "r"
    assert run([*TRAIN, "--steps", "10", "--out", out], capsys)[0] == 0
    code, stdout, _ = run([*TRAIN, "--steps", "20", "--out", out, "--resume"], capsys)
    assert code == 0 and "resuming at step 10" in stdout
    ours, straight = load_checkpoint(out), load_checkpoint(trained)
    for a, b in zip(ours.state["net"].values(), straight.state["net"].values(), strict=True):
        assert torch.equal(a, b)
    assert (out / "binned.csv").read_text() == (trained / "binned.csv").read_text()


def test_training_bar_shows_the_logged_loss(tmp_path, capsys):
    """The bar's loss is log.csv's: the mean objective loss since the last log row."""
    code, _, err = run([*TRAIN, "--steps", 10, "--out", tmp_path / "t", "--progress"], capsys)
    assert code == 0, err
    shown = re.findall(r"loss=([-+.e0-9]+)", err)[-1]
    logged = float((tmp_path / "t" / "log.csv").read_text().splitlines()[-1].split(",")[1])
    assert shown == f"{logged:.4g}" and "10/10" in err


def test_sample_writes_a_png(trained, tmp_path, capsys):
    out = tmp_path / "s.png"
    code, stdout, _ = run(["sample", "--checkpoint", trained, "--n", 50, "--steps", 6, "--out", out, "--npy"],
                          capsys)
    assert code == 0 and out.read_bytes()[:4] == b"\x89PNG"
    assert out.with_suffix(".npy").exists()
    # An existing PNG is kept unless --force.
    before = out.read_bytes()
    again = ["sample", "--checkpoint", trained, "--n", 5, "--steps", 3, "--seed", 1, "--out", out]
    assert_usage_error(run(again, capsys), "--force")
    assert out.read_bytes() == before
    assert run([*again, "--force", "--no-progress"], capsys)[0] == 0
    assert out.read_bytes() != before


def test_diagnose_estimates_the_floor_and_reports_train_and_test(trained, tmp_path, capsys):
    out = tmp_path / "d"
    code, stdout, err = run(["diagnose", "--checkpoint", trained, "--levels", 4, "--queries", 64,
                             "--out", out], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["diagnosis.csv", "diagnosis.json", "diagnosis.png",
                                                     "diagnosis_bands.csv", "optimal_loss.json"]
    doc = json.loads((out / "diagnosis.json").read_text())
    # Where the gap is (issue 19): each sigma band's share of the weighted total gap, in JSON, CSV and the
    # printout's last lines; the bands add up to the total gap.
    for split in ("train", "test"):
        bands = doc["gap_bands"][split]
        assert len(bands) == 4 and bands[0]["sigma_lo"] == 0
        assert sum(b["weighted_gap"] for b in bands) == pytest.approx(doc["totals"][split]["gap"], rel=1e-9)
        assert f"where the gap is ({split}): " in stdout and "% of the gap at " in stdout
    assert (out / "diagnosis_bands.csv").read_text().startswith("split,sigma_lo,sigma_hi,weighted_gap,share")
    assert "UserWarning" not in err
    # The curve estimated here is saved, with the data's fingerprint, and the printout says how to reuse it.
    saved = out / "optimal_loss.json"
    assert f"pass --curve {saved}" in stdout
    again = run(["diagnose", "--checkpoint", trained, "--curve", saved, "--queries", 64, "--out",
                 tmp_path / "d2", "--no-progress"], capsys)
    assert again[0] == 0, again[2]
    assert not (tmp_path / "d2" / "optimal_loss.json").exists()
    assert len(doc["train"]) == len(doc["test"]) == 4 and doc["objective"] == "edm"
    assert set(doc["totals"]) == {"train", "test"} and not doc["floor_violation"]
    assert doc["objective_spec"] == load_checkpoint(trained).objective.to_dict()
    assert "total edm loss (train)" in stdout
    # A header says what is evaluated; one bar per split, each counting the 4 sigma levels.
    head = stdout.splitlines()[:4]
    assert [line.split(":")[0] for line in head] == ["model", "data", "objective", "curve"]
    assert "mlp" in head[0] and "step 20" in head[0] and "ring" in head[1] and "edm" in head[2]
    assert "estimated here: 4 levels" in head[3]
    assert "model loss (train)" in err and "model loss (test)" in err and "4/4" in err and "8/8" not in err
    assert "optimal loss" in err


def test_diagnose_test_data_for_data_without_a_test_split(trained, tmp_path, capsys):
    """--test-data: held-out points from a file of their own, where --data (a .npy file) has no test split."""
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, (2, 300))
    for name, a in (("train.npy", angle[0]), ("held.npy", angle[1])):
        np.save(tmp_path / name, np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32))
    out = tmp_path / "d"
    code, stdout, err = run(["diagnose", "--checkpoint", trained, "--data", tmp_path / "train.npy",
                             "--test-data", tmp_path / "held.npy", "--levels", 3, "--queries", 32,
                             "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    doc = json.loads((out / "diagnosis.json").read_text())
    assert len(doc["test"]) == 3 and "held.npy" in json.dumps(doc["test_data"])
    assert "test N = 300" in stdout
    missing = run(["diagnose", "--checkpoint", trained, "--data", tmp_path / "train.npy", "--test-data",
                   tmp_path / "none.npy", "--out", tmp_path / "d3"], capsys)
    assert missing[0] == 2


def test_diagnose_with_a_matching_curve(trained, tmp_path, capsys):
    curve_dir = tmp_path / "est"
    assert run(["estimate", "--no-progress", "--data", "ring", "--n", 400, "--sigmas", "0.1,1,5",
                "--out", curve_dir], capsys)[0] == 0
    out = tmp_path / "d"
    code, _, err = run(["diagnose", "--checkpoint", trained, "--curve", curve_dir / "optimal_loss.json",
                        "--queries", 32, "--out", out], capsys)
    assert code == 0, err
    assert [g["sigma"] for g in json.loads((out / "diagnosis.json").read_text())["train"]] == [0.1, 1.0, 5.0]


# -- bad input ---------------------------------------------------------------------------------


def test_diagnose_rejects_a_truncated_checkpoint(trained, tmp_path, capsys):
    bad = tmp_path / "cut.pt"
    data = (trained / "checkpoint.pt").read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    out = tmp_path / "d"
    assert_usage_error(run(["diagnose", "--checkpoint", bad, "--out", out], capsys), "truncated")
    assert not out.exists()


def test_diagnose_rejects_data_of_another_dimension(trained, tmp_path, capsys):
    out = tmp_path / "d"
    assert_usage_error(run(["diagnose", "--checkpoint", trained, "--data", "digits", "--out", out], capsys),
                       "shape")
    assert not out.exists()


def test_diagnose_rejects_a_curve_of_other_data(trained, tmp_path, capsys):
    curve_dir = tmp_path / "est"
    assert run(["estimate", "--no-progress", "--data", "ring", "--n", 300, "--sigmas", "0.1,1",
                "--out", curve_dir], capsys)[0] == 0
    out = tmp_path / "d"
    result = run(["diagnose", "--checkpoint", trained, "--curve", curve_dir / "optimal_loss.json",
                  "--out", out], capsys)
    # The message names the two datasets, not two fingerprint hashes.
    assert_usage_error(result, "was computed on ring (train, N = 300), the model is evaluated on ring "
                               "(train, N = 400)")
    assert not out.exists()


def test_train_refuses_to_overwrite_or_to_resume_with_other_settings(trained, capsys):
    before = (trained / "checkpoint.pt").read_bytes()
    assert_usage_error(run([*TRAIN, "--steps", "30", "--out", trained], capsys), "--resume")
    assert_usage_error(run([*TRAIN, "--steps", "30", "--lr", "0.01", "--out", trained, "--resume"], capsys),
                       "lr 0.001 (now 0.01)")
    assert_usage_error(run([*TRAIN, "--steps", "20", "--out", trained, "--resume"], capsys),
                       "already at step")
    assert (trained / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("args,match", [
    (["--model", "unet"], "images"),
    (["--objective", "nope"], "unknown objective"),
    (["--steps", "0"], "steps"),
])
def test_train_bad_options(args, match, tmp_path, capsys):
    out = tmp_path / "t"
    assert_usage_error(run([*TRAIN, "--out", out, *args], capsys), match)
    assert not out.exists()


def test_sample_needs_a_png_and_a_checkpoint(trained, tmp_path, capsys):
    assert_usage_error(run(["sample", "--checkpoint", trained, "--out", tmp_path / "s.jpg"], capsys), ".png")
    missing = tmp_path / "none.pt"
    assert_usage_error(run(["sample", "--checkpoint", missing, "--out", tmp_path / "s.png"], capsys),
                       "no checkpoint")


@pytest.mark.slow
def test_study_diagnose_quick_budget(tmp_path, capsys):
    out = tmp_path / "study"
    code, stdout, err = run(["study", "diagnose", "--budget", "quick", "--datasets", "digits",
                             "--variants", "edm,vp", "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    for name in ("diagnose_study.json", "gaps.csv", "totals.csv", "gaps.png", "samples_digits.png"):
        assert (out / name).exists(), name
    doc = json.loads((out / "diagnose_study.json").read_text())
    assert [r["variant"] for r in doc["datasets"]["digits"]["variants"]] == ["edm", "vp"]
    assert len((out / "totals.csv").read_text().splitlines()) == 1 + 2 * 2
    table = [line.split() for line in stdout.splitlines() if line.startswith("digits")]  # the printed table
    assert "gap own (train)" in stdout and [row[1] for row in table] == ["edm", "vp"]
    cells = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert len(cells) == 2
    code, again, err = run(["study", "diagnose", "--budget", "quick", "--datasets", "digits",
                            "--variants", "edm,vp", "--out", out, "--no-progress"], capsys)
    assert code == 0 and again == stdout  # resumed per cell: nothing recomputed, the same report
    assert {p: p.stat().st_mtime_ns for p in cells} == cells
    assert_usage_error(run(["study", "diagnose", "--budget", "quick", "--datasets", "mnist", "--out", out],
                           capsys), "unknown dataset")


def test_study_diagnose_says_up_front_how_long_it_takes(tmp_path, capsys, monkeypatch):
    from lossfloor.app import study_commands
    from lossfloor.studies import diagnose as studies

    calls = []
    fake = lambda *args, **kwargs: calls.append(args) or {"datasets": {}}  # noqa: E731
    monkeypatch.setattr(study_commands.diagnose_lib, "run_diagnose_study", fake)
    code, stdout, err = run(["study", "diagnose", "--out", tmp_path], capsys)
    assert code == 0, err
    assert calls[0][2] == "cpu"
    assert stdout.splitlines()[0] == f"budget cpu: {studies.DIAGNOSE_BUDGET_TIMES['cpu']}"
    assert "30 minutes" in stdout.splitlines()[0]
