"""The losses study: its objectives, a tiny end-to-end run, resume, and the CLI's input errors."""

import json
import math
from dataclasses import replace

import pytest
import torch

from lossfloor.app.cli import main
from lossfloor.objective import get_objective
from lossfloor.studies import losses


def test_nelbo_objective_is_the_exact_vdm_weight_above_sigma_min():
    """lambda p(log sigma) = 1 / sigma^2 on [sigma_min, inf): training loss = the bound's diffusion term."""
    sigma_min = 1e-2
    sig = torch.logspace(-1.9, 2.5, 40, dtype=torch.float64)
    for target in losses.LOSS_TARGETS:
        obj = losses.losses_objective(target, "nelbo", sigma_min)
        dens = torch.exp(obj.log_density(torch.log(sig)))
        torch.testing.assert_close(obj.x0_weight(sig) * dens, sig**-2, rtol=1e-9, atol=0)
        assert obj.sample_sigma(20000, torch.Generator().manual_seed(0)).min() >= sigma_min * (1 - 1e-9)
    simple = losses.losses_objective("eps", "simple", sigma_min)
    assert simple.time_dist == get_objective("cosine").time_dist  # t ~ U(0, 1) untouched


TINY_POINTS = replace(losses.POINTS_PRESETS["quick"], width=16, depth=2, epochs=5, batch_size=128,
                      n_train=512, n_test=400, nelbo_points=128, nelbo_samples=2, samples=200, sample_steps=4,
                      floor_queries=32)
TINY_IMAGES = replace(losses.IMAGE_PRESETS["quick"], width=8, epochs=1, n_train=256, n_test=128,
                      nelbo_points=32, nelbo_samples=1, samples=64, sample_steps=3, floor_queries=16,
                      classifier_steps=20)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(losses.POINTS_PRESETS, "quick", TINY_POINTS)
    monkeypatch.setitem(losses.IMAGE_PRESETS, "quick", TINY_IMAGES)


@pytest.mark.slow
def test_tiny_points_study_writes_tables_and_resumes(tiny, tmp_path):
    args = (["ring"], ["x0", "eps"], ["nelbo", "simple"], [0, 1], "quick", tmp_path)
    summary = losses.run_losses_study(*args, progress=False)
    assert summary["cells"] == 8
    rows = {(r["target"], r["loss"]): r for r in summary["rows"]}
    assert set(rows) == {(t, w) for t in ("x0", "eps") for w in ("nelbo", "simple")}
    for r in rows.values():
        assert r["seeds"] == 2 and math.isfinite(r["nelbo_bpd"]) and r["nelbo_bpd_se"] >= 0
        assert math.isfinite(r["sliced_wasserstein"]) and r["covariance_distance"] >= 0
    for name in ("table.md", "table.csv", "summary.json", "ring/loss_vs_t.png", "ring/samples.png"):
        assert (tmp_path / name).is_file()
    table = (tmp_path / "table.md").read_text()
    assert "| ring | x0 |" in table and "±" in table
    lines = losses.terminal_table(summary).splitlines()  # what `lossfloor study losses` prints
    assert lines[0].split()[:4] == ["data", "target", "loss", "seeds"] and len(lines) == 2 + 4
    assert all(line.split()[0] == "ring" and "±" in line for line in lines[2:])
    # resume: a deleted cell is recomputed identically from its final checkpoint, the others are kept
    cells = sorted((tmp_path / "ring" / "cells").glob("*.json"))
    kept = {p: p.stat().st_mtime_ns for p in cells[1:]}
    before = json.loads(cells[0].read_text())
    cells[0].unlink()
    losses.run_losses_study(*args, progress=False)
    after = json.loads(cells[0].read_text())
    assert all(p.stat().st_mtime_ns == m for p, m in kept.items())
    before.pop("train_seconds"), after.pop("train_seconds")
    assert after == before


@pytest.mark.slow
def test_tiny_image_study_uses_the_cached_classifier(tiny, tmp_path):
    summary = losses.run_losses_study(["digits"], ["v"], ["simple"], [0], "quick", tmp_path, progress=False)
    (row,) = summary["rows"]
    assert row["classifier_fd"] > 0 and math.isfinite(row["nelbo_bpd"])
    cell = json.loads(next((tmp_path / "digits" / "cells").glob("*.json")).read_text())
    assert cell["nelbo"]["dequantization"] == pytest.approx(-math.log(0.125))  # digits: 17 levels in [-1, 1]
    assert (tmp_path / "digits" / "classifier.pt").is_file()


@pytest.mark.parametrize("args", [["--targets", "x0,velocity"], ["--losses", "elbo"], ["--seeds", "0,a"],
                                  ["--datasets", "moons"], ["--preset", "huge"]])
def test_cli_rejects_bad_input_without_writing(tmp_path, capsys, args):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:
        main(["study", "losses", "--out", str(out), *args])
    assert err.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists()


def test_fashion_mnist_has_its_own_reduced_budget():
    assert losses.losses_preset("fashion-mnist", "reduced").steps(60_000) == 500
    assert losses.losses_preset("digits", "reduced") == losses.IMAGE_PRESETS["reduced"]
    assert losses.losses_preset("ring", "reduced") == losses.POINTS_PRESETS["reduced"]
    assert losses.losses_preset("fashion-mnist", "full") == losses.IMAGE_PRESETS["full"]
