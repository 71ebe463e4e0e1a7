"""The scaling study: does the training loss follow a power law in compute better once J* is subtracted?

The analogue of the optimal-loss paper's section on scaling (its Figure 3), at a size this machine can
run.  Several model sizes are trained with one objective (EDM) and one optimizer recipe; at log-spaced
steps each checkpoint is evaluated on fixed draws (common random numbers, so every curve is smooth):

- the objective's total loss E_p(sigma)[lambda(sigma) ||x0_hat - x0||^2 / D] on a fixed evaluation set
  from the training data (fixed points, sigma draws and noise), and J* *on the same draws* from the exact
  posterior over the training set (lossfloor's kernel).  Given x~ the expected loss of x0_hat is
  tr Var(x0 | x~) / D + ||x0_hat - E[x0 | x~]||^2 / D, so J - J* is estimated by the mean of the second
  term: paired, non-negative and far less noisy than a difference of two losses (`evaluate`).  The
  cached J*(sigma) curve's total is reported next to the same-draw floor;
- the per-sigma x0 loss at every level of the J* curve, with the same-draw floor;
- both again on held-out data, where the training-set J* is *not* a floor.

Compute F = (FLOPs of one training step) x steps, the FLOPs measured with torch's FlopCounterMode over the
forward and backward pass of one batch (2 FLOPs per multiply-add of matmuls and convolutions; the optimizer
update, EMA and elementwise ops are not counted).

With `band` set (the committed `cpu` preset) the loss is the EDM objective restricted to the transition
band sigma in [sigma*, band x sigma*] (log sigma uniform there, EDM's weight), for training and evaluation:
sigma* is where J*/V crosses 1% (`floor/critical.py`), so J* is 1-90% of V on the band and the largest
models come near it; below the band J* ~ 0 and only memorising the training set closes the gap there.

A cell is one (model width, seed, checkpoint step): training resumes from the run's checkpoint to the cell's
step, then the cell is evaluated and written; an interrupted study resumes at the next missing cell.
The fits (`lossfloor.evaluate.scaling`) run on the finished cells in `scaling_report.write_scaling_report`.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from lossfloor.core.errors import InputError
from lossfloor.data.load import load_dataset
from lossfloor.evaluate.posterior import posterior_moments
from lossfloor.floor.config import EstimatorConfig
from lossfloor.nets.networks import ModelConfig, build_model, parameter_count
from lossfloor.objective.densities import LogSigmaUniform
from lossfloor.objective.objective import get_objective
from lossfloor.studies.common import (
    SEED_MAX,
    cached_floor,
    check_choice,
    check_seeds,
    json_plain,
    mean_se,
    run_cells,
    write_json,
)
from lossfloor.studies.scaling.report import scaling_terminal_table, write_scaling_report
from lossfloor.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from lossfloor.train.trainer import TrainConfig, Trainer, data_info
from lossfloor.train.trainer import train as run_training

OBJECTIVE = "edm"


@dataclass(frozen=True)
class ScalingPreset:
    """Model sizes, training recipe and evaluation sizes of one scaling study."""

    dataset: str
    model: str  # mlp (widths) or unet (base channels)
    widths: tuple[int, ...]
    steps: int  # the last checkpoint
    first_step: int  # the first checkpoint
    checkpoints: int  # log-spaced between first_step and steps
    batch_size: int
    lr: float
    warmup: int
    ema: float
    levels: int  # sigma levels of the J* curve, geometric over [sigma_min, sigma_max]
    floor_queries: int
    eval_points: int  # training points in the evaluation set (all if larger)
    eval_draws: int  # (sigma, noise) draws per evaluation point for the total loss
    test_points: int  # held-out points (all if larger)
    sigma_min: float = 0.005
    sigma_max: float = 80.0
    n_boot: int = 1000
    seeds: int = 1  # training runs per width (seeds seed, seed + 1, ...)
    n_train: int | None = None  # a seeded subset of the training split (None: all of it)
    band: float | None = None  # loss on [sigma*, band sigma*] (None: the objective's own density)
    grid: int = 24  # levels of the J* curve that locates sigma* (band only)

    def checkpoint_steps(self) -> list[int]:
        """Distinct log-spaced checkpoint steps from `first_step` to `steps`."""
        return sorted({int(round(s)) for s in np.geomspace(self.first_step, self.steps, self.checkpoints)})

    def sigmas(self, sigma_star: float | None = None) -> np.ndarray:
        """The per-sigma evaluation levels: over the band given sigma*, else over [sigma_min, sigma_max]."""
        if self.band is not None and sigma_star is not None:
            return np.geomspace(sigma_star, self.band * sigma_star, self.levels)
        return np.geomspace(self.sigma_min, self.sigma_max, self.levels)

    def curve_sigmas(self) -> np.ndarray:
        """The levels of the cached J* curve (a wider grid for sigma* in band mode)."""
        return np.geomspace(self.sigma_min, self.sigma_max, self.grid if self.band else self.levels)


SCALING_PRESETS = {
    # The committed run on 2 CPU cores (issue 23): 256 digits that the larger MLPs nearly memorise, the EDM
    # loss on the transition band [sigma*, 10 sigma*], 10 widths (4 to 128, 250x in parameters) x 3 seeds,
    # 8,000 steps each (the small widths plateau), 16 log-spaced checkpoints.
    "cpu": ScalingPreset(dataset="digits", model="mlp", widths=(4, 6, 8, 12, 16, 24, 32, 48, 64, 128),
                         steps=8000, first_step=25, checkpoints=16, batch_size=128, lr=2e-3, warmup=20,
                         ema=0.99, levels=8, floor_queries=512, eval_points=256, eval_draws=16,
                         test_points=359, n_boot=1000, seeds=3, n_train=256, band=10.0),
    # For a GPU: 6 UNet widths (~36x in parameters) on Fashion-MNIST, 20k steps, 3 seeds, the band loss.
    "full": ScalingPreset(dataset="fashion-mnist", model="unet", widths=(8, 12, 16, 24, 32, 48),
                          steps=20_000, first_step=100, checkpoints=14, batch_size=128, lr=1e-3, warmup=200,
                          ema=0.999, levels=8, floor_queries=4096, eval_points=4096, eval_draws=2,
                          test_points=4096, seeds=3, band=10.0),
    # Tests: seconds.
    "quick": ScalingPreset(dataset="digits", model="mlp", widths=(8, 16, 32), steps=40, first_step=5,
                           checkpoints=4, batch_size=32, lr=2e-3, warmup=5, ema=0.9, levels=5,
                           floor_queries=128, eval_points=64, eval_draws=2, test_points=32, n_boot=50,
                           seeds=2, n_train=128, band=10.0),
}
PRESET_NAMES = tuple(SCALING_PRESETS)


# -- evaluation on fixed draws ----------------------------------------------------------------------


@dataclass(frozen=True)
class EvalDraws:
    """Fixed evaluation draws: points x0, per-draw sigma and noise for the total loss, and per-point noise
    for the per-sigma levels (common random numbers across checkpoints and model sizes)."""

    x0: torch.Tensor  # (M, ...) the points, repeated once per draw
    sigma: torch.Tensor  # (M,) float64 draws from the objective's p(sigma)
    eps: torch.Tensor  # (M, ...) noise of the total-loss draws
    level_x0: torch.Tensor  # (n, ...) the distinct points
    level_eps: torch.Tensor  # (n, ...) noise used at every level


def eval_draws(x: torch.Tensor, points: int, draws: int, objective, seed: int) -> EvalDraws:
    """`points` rows of x (a seeded subset if fewer than all) with `draws` noise draws each."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=gen)[:points].sort().values if points < len(x) else \
        torch.arange(len(x))
    base = x[idx].float()
    x0 = base.repeat(draws, *([1] * (base.dim() - 1)))
    sigma = objective.sample_sigma(len(x0), gen).double()
    eps = torch.randn(x0.shape, generator=gen)
    return EvalDraws(x0, sigma, eps, base, torch.randn(base.shape, generator=gen))


@torch.no_grad()
def denoiser_outputs(denoiser, x0, sigma, eps, batch_size: int = 4096, device="cpu") -> torch.Tensor:
    """x0_hat = D(x0 + sigma eps, sigma) per draw, flattened to (M, D) in float64, in batches."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(len(x0))
    out = []
    for i in range(0, len(x0), batch_size):
        s = sigma[i:i + batch_size]
        x = x0[i:i + batch_size].to(device)
        scale = s.to(device=device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        noisy = x + scale * eps[i:i + batch_size].to(device)
        out.append(denoiser(noisy, s).reshape(len(x), -1).double().cpu())
    return torch.cat(out)


def _losses(x_hat: torch.Tensor, x0: torch.Tensor, floor: dict | None) -> dict:
    """Per-draw raw loss ||x0_hat - x0||^2 / D and, given the optimal denoiser's moments on the same draws,
    the excess ||x0_hat - mu||^2 / D and the Rao-Blackwellised loss tr Var / D + excess."""
    out = {"raw": (x_hat - x0.reshape(len(x0), -1).double()).pow(2).mean(1).numpy()}
    if floor is not None:
        excess = (x_hat - floor["mean"]).pow(2).mean(1).numpy()
        out.update(excess=excess, rb=floor["variance"].numpy() + excess)
    return out


def evaluate(denoiser, objective, draws: EvalDraws, sigmas, floor: dict | None, device="cpu") -> dict:
    """Total objective loss and per-sigma x0 losses of a denoiser on fixed draws, each as (mean, SE).

    With `floor` (`same_draw_floor` of these draws) the losses are Rao-Blackwellised over x0 | x~: given
    x~ the expected loss of x0_hat is tr Var(x0 | x~) / D + ||x0_hat - E[x0 | x~]||^2 / D, so J is the mean
    of that and J - J* the mean of the second term, a non-negative paired estimate ("raw" keeps
    ||x0_hat - x0||^2 / D).  Without it (held-out data) only the raw losses are reported.
    """
    lam = objective.x0_weight(draws.sigma).numpy()
    total = _losses(denoiser_outputs(denoiser, draws.x0, draws.sigma, draws.eps, device=device), draws.x0,
                    floor["total"] if floor is not None else None)
    levels = [_losses(denoiser_outputs(denoiser, draws.level_x0, float(s), draws.level_eps, device=device),
                      draws.level_x0, floor["levels"][k] if floor is not None else None)
              for k, s in enumerate(sigmas)]
    result = {"total_raw": mean_se(lam * total["raw"]), "levels_raw": [mean_se(v["raw"]) for v in levels]}
    if floor is not None:
        result.update(total=mean_se(lam * total["rb"]), total_gap=mean_se(lam * total["excess"]),
                      levels=[mean_se(v["rb"]) for v in levels],
                      level_gaps=[mean_se(v["excess"]) for v in levels])
    else:
        result.update(total=result["total_raw"], levels=result["levels_raw"])
    return result


def same_draw_floor(train_rows, objective, draws: EvalDraws, sigmas) -> dict:
    """The optimal denoiser's moments on the evaluation draws (total and per level)."""
    return {"total": posterior_moments(train_rows, draws.x0, draws.sigma, draws.eps),
            "levels": [posterior_moments(train_rows, draws.level_x0, float(s), draws.level_eps)
                       for s in sigmas]}


# -- training ----------------------------------------------------------------------------------------


def step_flops(train, objective, model, config, device="cpu") -> int:
    """FLOPs of one training step (forward + backward of one batch) counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode


    trainer = Trainer(train.x, objective, model, config, device=device)
    with FlopCounterMode(display=False) as counter:
        trainer.train_step()
    return int(counter.get_total_flops())


def _train_to(train, objective, model, config, run_dir: Path, step: int, device, info) -> object:
    """The run's trainer at exactly `step`, resuming from its checkpoint (restarting if it is past it)."""

    path = run_dir / CHECKPOINT_NAME
    if path.exists() and load_checkpoint(path).step > step:  # a later cell's state: start this run over
        shutil.rmtree(run_dir)
    return run_training(train.x, objective, model, replace(config, steps=step), out=run_dir, resume=True,
                        progress=False, data_info=info, device=device)


# -- the study ---------------------------------------------------------------------------------------


def cell_name(width: int, seed: int, step: int) -> str:
    return f"w{width}_s{seed}_step{step:06d}"


def study_objective(preset: ScalingPreset, curve):
    """EDM, restricted to the band [sigma*, band sigma*] of `curve` when the preset has one; and sigma*."""
    objective = get_objective(OBJECTIVE)
    if preset.band is None:
        return objective, None
    sigma_star = float(curve.critical_sigma())
    if not (sigma_star > 0 and np.isfinite(sigma_star)):
        raise InputError(f"no critical sigma on the J* curve's grid [{preset.sigma_min}, {preset.sigma_max}]")
    band = LogSigmaUniform(sigma_star, preset.band * sigma_star)
    return objective.with_(time_dist=band, name=f"{OBJECTIVE}-band"), sigma_star


def run_scaling_study(preset_name: str, out, *, seed: int = 0, data_dir=None, device: str = "cpu",
                      widths=None, progress: bool = True, report: bool = True) -> dict:
    """Train every (width, seed) run to every checkpoint (resumable per cell), evaluate, then fit and write
    the report once every cell of the preset is finished (`widths`: train only these, e.g. to split the
    work over processes)."""

    check_choice("preset", preset_name, SCALING_PRESETS)
    check_seeds([seed], "--seed")
    preset = SCALING_PRESETS[preset_name]
    if seed > SEED_MAX - max(2, preset.seeds):  # seed + 1, seed + 2 seed the draws; + k the runs
        raise InputError(f"--seed: {seed} is too large for the scaling study; at most "
                         f"{SEED_MAX - max(2, preset.seeds)}")
    for w in widths or ():
        if w not in preset.widths:
            raise InputError(f"--widths: {w} is not a width of preset {preset_name!r} "
                             f"({', '.join(map(str, preset.widths))})")
    kw = {"data_dir": data_dir} if preset.dataset == "fashion-mnist" else {}
    train = load_dataset(preset.dataset, n=preset.n_train, **kw)
    test = load_dataset(preset.dataset, split="test", **kw)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curve = cached_floor(out / "optimal_loss.json", train, preset.curve_sigmas(),
                         EstimatorConfig(queries=preset.floor_queries), seed=seed, progress=progress)
    objective, sigma_star = study_objective(preset, curve)
    sigmas = preset.sigmas(sigma_star)
    draws = eval_draws(train.x, preset.eval_points, preset.eval_draws, objective, seed + 1)
    test_draws = eval_draws(test.x, preset.test_points, preset.eval_draws, objective, seed + 2)
    floor = same_draw_floor(train.rows(), objective, draws, sigmas)
    lam = objective.x0_weight(draws.sigma).numpy()
    floor_summary = {"total": mean_se(lam * floor["total"]["variance"].numpy()),
                     "levels": [mean_se(v["variance"].numpy()) for v in floor["levels"]]}
    info = data_info(train, {"name": train.name, "n": preset.n_train, "seed": 0, "flip": False})
    config = TrainConfig(steps=preset.steps, batch_size=preset.batch_size, lr=preset.lr, warmup=preset.warmup,
                         ema=preset.ema, seed=seed, log_every=max(1, preset.steps // 50),
                         checkpoint_every=max(1, preset.steps // 10))
    sizes = {}
    for w in preset.widths:
        model = ModelConfig(preset.model, train.shape, w)
        sizes[w] = {"parameters": parameter_count(build_model(model)),
                    "flops_per_step": step_flops(train, objective, model, config, device)}
    key = json_plain({"preset": asdict(preset), "seed": seed, "floor_fingerprint": curve.fingerprint,
                      "objective": objective.to_dict()})

    def compute(cell) -> dict:
        w, k, step = cell
        model = ModelConfig(preset.model, train.shape, w)
        trainer = _train_to(train, objective, model, replace(config, seed=seed + k),
                            out / "runs" / f"w{w}_s{k}", step, device, info)
        den = trainer.denoiser()
        return {"width": w, "run": k, "step": step, **sizes[w], "compute": sizes[w]["flops_per_step"] * step,
                "train_seconds": trainer.elapsed, "cell": key,
                "train": evaluate(den, objective, draws, sigmas, floor, device),
                "test": evaluate(den, objective, test_draws, sigmas, None, device)}

    all_cells = [(w, k, s) for w in preset.widths for k in range(preset.seeds)
                 for s in preset.checkpoint_steps()]
    cells = [c for c in all_cells if not widths or c[0] in widths]
    run_cells(cells, lambda c: out / "cells" / f"{cell_name(*c)}.json", compute,
              matches=lambda r: r.get("cell") == key, progress=progress, desc="scaling study",
              name_of=lambda c: cell_name(*c))
    write_json(out / "setup.json", {
        "preset_name": preset_name, "preset": asdict(preset), "seed": seed, "objective": objective.name,
        "objective_definition": objective.to_dict(), "sigma_star": sigma_star, "sigmas": sigmas.tolist(),
        "data": train.describe(), "test_data": test.describe(),
        "sizes": {str(k): v for k, v in sizes.items()},
        "flop_convention": "torch.utils.flop_counter.FlopCounterMode over forward + backward of one batch "
                           "(2 FLOPs per multiply-add; optimizer, EMA and elementwise ops not counted)",
        "optimal_loss": curve.to_dict(), "curve_total": asdict(curve.total(objective)),
        "same_draw_floor": floor_summary, "eval_draws": len(draws.x0), "test_draws": len(test_draws.x0),
        "checkpoint_steps": preset.checkpoint_steps(), "cells": [cell_name(*c) for c in all_cells]})
    finished = sum((out / "cells" / f"{cell_name(*c)}.json").exists() for c in all_cells)
    if not report or finished < len(all_cells):
        return {"finished": finished, "cells": len(all_cells)}
    return write_scaling_report(out)


__all__ = ["SCALING_PRESETS", "ScalingPreset", "run_scaling_study", "scaling_terminal_table",
           "write_scaling_report"]
