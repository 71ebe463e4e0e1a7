"""The scaling study: same-draw floors, paired gaps, FLOP counting, presets, resume and the CLI."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from lossfloor.app.cli import main
from lossfloor.nets.networks import ModelConfig, build_model, parameter_count
from lossfloor.objective.objective import get_objective
from lossfloor.studies.scaling import run as study
from lossfloor.train.trainer import TrainConfig


def _data(n=40, d=6, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).double() * 0.5


def _posterior_mean(rows, noisy, sigma):
    """E[x0 | x~] by a direct softmax over all rows (the reference)."""
    logits = -((noisy[:, None, :] - rows[None, :, :]) ** 2).sum(-1) / (2 * sigma**2)
    return torch.softmax(logits, 1) @ rows


def _posterior_variance(rows, noisy, sigma):
    """tr Var(x0 | x~) / D by a direct softmax."""
    logits = -((noisy[:, None, :] - rows[None, :, :]) ** 2).sum(-1) / (2 * sigma**2)
    w = torch.softmax(logits, 1)
    mean = w @ rows
    return ((rows[None, :, :] - mean[:, None, :]) ** 2).sum(-1).mul(w).sum(1) / rows.shape[1]


def test_posterior_moments_match_a_direct_softmax():
    rows = _data()
    x0, eps = rows[:10], torch.randn(10, 6, generator=torch.Generator().manual_seed(1)).double()
    for sigma in (0.05, 0.4, 3.0):
        got = study.posterior_moments(rows, x0, sigma, eps)
        noisy = x0 + sigma * eps
        torch.testing.assert_close(got["mean"], _posterior_mean(rows, noisy, sigma), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(got["variance"], _posterior_variance(rows, noisy, sigma), rtol=1e-7,
                                   atol=1e-12)
    sigmas = torch.tensor([0.05, 0.4, 3.0] * 3 + [1.0], dtype=torch.float64)
    got = study.posterior_moments(rows, x0, sigmas, eps)
    for i in range(10):
        noisy = (x0[i] + sigmas[i] * eps[i])[None]
        torch.testing.assert_close(got["mean"][i], _posterior_mean(rows, noisy, float(sigmas[i]))[0])


def test_the_optimal_denoiser_has_zero_gap_on_the_same_draws():
    """evaluate() pairs the model's and the optimal denoiser's losses draw by draw, so the posterior mean
    itself must show a gap of exactly 0 (total, with EDM's lambda, and at every level)."""
    rows = _data().float()
    objective = get_objective("edm")

    def optimal(noisy, sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(len(noisy))
        return torch.stack([_posterior_mean(rows.double(), noisy[i:i + 1].double(), float(sigma[i]))[0]
                            for i in range(len(noisy))])

    draws = study.eval_draws(rows, 20, 2, objective, seed=3)
    sigmas = [0.1, 1.0, 10.0]
    floor = study.same_draw_floor(rows, objective, draws, sigmas)
    result = study.evaluate(optimal, objective, draws, sigmas, floor)
    assert 0 <= result["total_gap"][0] < 1e-10 * result["total"][0]
    for (gap, _), (level, _) in zip(result["level_gaps"], result["levels"], strict=True):
        assert 0 <= gap < 1e-10 * max(level, 1e-6)
    # The Rao-Blackwellised J and the raw mean estimate the same loss: they agree within their SEs.
    raw, rb = result["total_raw"], result["total"]
    assert abs(raw[0] - rb[0]) < 3 * math.hypot(raw[1], rb[1])


def test_eval_draws_are_fixed_by_the_seed():
    rows, objective = _data().float(), get_objective("edm")
    a, b = study.eval_draws(rows, 16, 3, objective, 7), study.eval_draws(rows, 16, 3, objective, 7)
    assert len(a.x0) == 48 and len(a.level_x0) == 16
    for name in ("x0", "sigma", "eps", "level_x0", "level_eps"):
        assert torch.equal(getattr(a, name), getattr(b, name))


def test_step_flops_count_forward_and_backward_of_every_linear_layer():
    """Each Linear costs 2 B in out FLOPs forward, as much for its weight gradient and as much for its input
    gradient (skipped where the input needs none), so one step is between 4 and 6 B sum(in out)."""
    from lossfloor.data.load import load_dataset

    train = load_dataset("digits")
    config = TrainConfig(batch_size=16)
    model = ModelConfig("mlp", train.shape, 16)
    macs = sum(m.in_features * m.out_features for m in build_model(model).modules()
               if isinstance(m, torch.nn.Linear))
    flops = study.step_flops(train, get_objective("edm"), model, config)
    assert 4 * 16 * macs <= flops <= 6 * 16 * macs
    wider = study.step_flops(train, get_objective("edm"), replace(model, width=32), config)
    assert 2.5 < wider / flops < 4.5  # ~ width^2


@pytest.mark.parametrize("name", ["cpu", "full"])
def test_presets_span_the_required_sizes(name):
    preset = study.SCALING_PRESETS[name]
    params = [parameter_count(build_model(ModelConfig(preset.model, (1, 28, 28) if preset.dataset ==
                                                      "fashion-mnist" else (1, 8, 8), w)))
              for w in preset.widths]
    assert len(params) >= 5 and max(params) / min(params) >= 30
    steps = preset.checkpoint_steps()
    assert steps[0] == preset.first_step and steps[-1] == preset.steps and len(steps) >= 8
    ratios = np.diff(np.log(steps))
    assert np.allclose(ratios, ratios.mean(), rtol=0.2)  # log-spaced


TINY = study.ScalingPreset(dataset="digits", model="mlp", widths=(4, 8, 16), steps=12, first_step=3,
                           checkpoints=3, batch_size=16, lr=2e-3, warmup=2, ema=0.9, levels=4,
                           floor_queries=64, eval_points=24, eval_draws=2, test_points=16, n_boot=20,
                           seeds=2, n_train=96, band=10.0, grid=12)


def test_cpu_preset_meets_the_design_of_issue_23():
    preset = study.SCALING_PRESETS["cpu"]
    assert len(preset.widths) >= 7 and preset.seeds >= 3 and preset.band == 10.0
    assert preset.n_train is not None and preset.n_train <= 500
    levels = preset.sigmas(0.5)
    assert levels[0] == pytest.approx(0.5) and levels[-1] == pytest.approx(5.0)


@pytest.mark.slow
def test_tiny_study_runs_resumes_and_reports(tmp_path, monkeypatch):
    monkeypatch.setitem(study.SCALING_PRESETS, "tiny", TINY)
    # Part of the widths: cells are written, the report waits for the rest.
    partial = study.run_scaling_study("tiny", tmp_path, widths=[4], progress=False)
    assert partial == {"finished": 6, "cells": 18} and not (tmp_path / "scaling.json").exists()
    report = study.run_scaling_study("tiny", tmp_path, progress=False)
    cells = sorted((tmp_path / "cells").glob("*.json"))
    assert len(cells) == 3 * 2 * 3
    for name in ("scaling.json", "points.csv", "levels.csv", "table.md", "scaling_total.png",
                 "scaling_sigma.png", "rho_by_sigma.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert set(report["frontier"]["fits"]) >= {"plain", "corrected", "free", "corrected_minus_plain",
                                               "free_floor_minus_jstar"}
    assert set(report["endpoints"]) >= {"delta_rho", "extrapolation_error", "free_floor_minus_jstar",
                                        "largest_model_j_over_jstar"}
    points = (tmp_path / "points.csv").read_text().splitlines()
    assert len(points) == 1 + 3 * 3 and points[0].startswith("width,parameters,step,runs,compute_flops")
    setup = json.loads((tmp_path / "setup.json").read_text())
    # The band loss: log sigma uniform on [sigma*, 10 sigma*], the levels across it.
    assert setup["sigmas"][0] == pytest.approx(setup["sigma_star"])
    assert setup["sigmas"][-1] == pytest.approx(10 * setup["sigma_star"])
    assert setup["objective_definition"]["time_dist"]["lo"] == pytest.approx(setup["sigma_star"])
    # Compute = FLOPs per step x steps, per width; the seeds of a width train different models.
    first = json.loads(cells[0].read_text())
    assert first["compute"] == setup["sizes"][str(first["width"])]["flops_per_step"] * first["step"]
    name = study.cell_name(first["width"], 1, first["step"])
    other = json.loads((tmp_path / "cells" / f"{name}.json").read_text())
    assert other["train"]["total"] != first["train"]["total"]
    # J is the same-draw floor plus the non-negative gap.
    floor = setup["same_draw_floor"]["total"][0]
    assert math.isclose(first["train"]["total"][0] - floor, first["train"]["total_gap"][0], rel_tol=1e-9)
    # A rerun reuses every finished cell (the key compares as JSON reads it back: no cell is rewritten).
    stamps = {c: c.stat().st_mtime_ns for c in cells}
    study.run_scaling_study("tiny", tmp_path, progress=False, report=False)
    assert {c: c.stat().st_mtime_ns for c in cells} == stamps
    # Resume: an earlier cell of a run that went on is recomputed identically (the run restarts).
    before = json.loads(cells[0].read_text())
    cells[0].unlink()
    study.run_scaling_study("tiny", tmp_path, progress=False, report=False)
    after = json.loads(cells[0].read_text())
    assert after["train"] == before["train"] and after["test"] == before["test"]


def test_unknown_width_is_refused_before_writing(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "scaling", "--preset", "quick", "--widths", "8,7", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and "--widths" in capsys.readouterr().err


def test_cli_rejects_an_unknown_preset(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "scaling", "--preset", "huge", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "--preset" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
