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

A cell is one (model width, checkpoint step): training resumes from the run's checkpoint to the cell's
step, then the cell is evaluated and written; an interrupted study resumes at the next missing cell.
The fits (`lossfloor.scaling`) run on the finished cells in `write_scaling_report`.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .. import scaling
from ..files import atomic_write_text
from ..formulation import get_objective
from .common import cached_floor, check_choice, csv_text, load_cells, markdown_table, run_cells, write_json

OBJECTIVE = "edm"
TRAINED_QUANTILE = 0.99  # the rho figure shades sigma above this quantile of the objective's p(sigma)


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

    def checkpoint_steps(self) -> list[int]:
        """Distinct log-spaced checkpoint steps from `first_step` to `steps`."""
        return sorted({int(round(s)) for s in np.geomspace(self.first_step, self.steps, self.checkpoints)})

    def sigmas(self) -> np.ndarray:
        return np.geomspace(self.sigma_min, self.sigma_max, self.levels)


SCALING_PRESETS = {
    # What the committed results could afford on 2 shared CPU cores (<= 20 min): 5 MLP widths (121x in
    # parameters, 2.8k to 335k) on the 8x8 digits, 2,000 steps each.
    "cpu": ScalingPreset(dataset="digits", model="mlp", widths=(8, 16, 32, 64, 128), steps=2000,
                         first_step=20, checkpoints=10, batch_size=128, lr=2e-3, warmup=20, ema=0.99,
                         levels=16, floor_queries=2876, eval_points=1438, eval_draws=4, test_points=359,
                         n_boot=400),
    # For a GPU: 6 UNet widths (~36x in parameters) on Fashion-MNIST, 20k steps.
    "full": ScalingPreset(dataset="fashion-mnist", model="unet", widths=(8, 12, 16, 24, 32, 48),
                          steps=20_000, first_step=100, checkpoints=14, batch_size=128, lr=1e-3, warmup=200,
                          ema=0.999,
                          levels=24, floor_queries=4096, eval_points=4096, eval_draws=2, test_points=4096),
    # Tests: seconds.
    "quick": ScalingPreset(dataset="digits", model="mlp", widths=(8, 16, 32), steps=40, first_step=5,
                           checkpoints=4, batch_size=32, lr=2e-3, warmup=5, ema=0.9, levels=5,
                           floor_queries=128, eval_points=64, eval_draws=2, test_points=32, n_boot=50),
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


def posterior_moments(train_rows: torch.Tensor, x0, sigma, eps, batch_size: int = 512) -> dict:
    """The optimal denoiser on the same draws: the posterior mean E[x0 | x~] over the training rows,
    shape (M, D), and tr Var(x0 | x~) / D, shape (M,) (its expected loss given x~), in float64.
    sigma is one level or one per draw (then one kernel call per draw)."""
    from ..kernel import posterior_stats

    rows = train_rows.double()
    center = rows.mean(0)
    flat_x0 = x0.reshape(len(x0), -1).double() - center
    scale = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
    noisy = flat_x0 + scale * eps.reshape(len(x0), -1).double()
    sig = torch.as_tensor(sigma, dtype=torch.float64)
    if sig.numel() > 1:
        parts = [posterior_stats(noisy[i:i + 1], rows, s, shift=center)
                 for i, s in enumerate(sig.tolist())]
    else:
        parts = [posterior_stats(noisy[i:i + batch_size], rows, float(sig), shift=center)
                 for i in range(0, len(x0), batch_size)]
    mean = torch.cat([p.mean() for p in parts]) + center
    variance = torch.cat([p.variance() for p in parts]) / rows.shape[1]
    return {"mean": mean, "variance": variance}


def _mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


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
    result = {"total_raw": _mean_se(lam * total["raw"]), "levels_raw": [_mean_se(v["raw"]) for v in levels]}
    if floor is not None:
        result.update(total=_mean_se(lam * total["rb"]), total_gap=_mean_se(lam * total["excess"]),
                      levels=[_mean_se(v["rb"]) for v in levels],
                      level_gaps=[_mean_se(v["excess"]) for v in levels])
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

    from ..training import Trainer

    trainer = Trainer(train.x, objective, model, config, device=device)
    with FlopCounterMode(display=False) as counter:
        trainer.train_step()
    return int(counter.get_total_flops())


def _train_to(train, objective, model, config, run_dir: Path, step: int, device, info) -> object:
    """The run's trainer at exactly `step`, resuming from its checkpoint (restarting if it is past it)."""
    from ..training import CHECKPOINT_NAME, load_checkpoint
    from ..training import train as run_training

    path = run_dir / CHECKPOINT_NAME
    if path.exists() and load_checkpoint(path).step > step:  # a later cell's state: start this run over
        shutil.rmtree(run_dir)
    return run_training(train.x, objective, model, replace(config, steps=step), out=run_dir, resume=True,
                        progress=False, data_info=info, device=device)


# -- the study ---------------------------------------------------------------------------------------


def cell_name(width: int, step: int) -> str:
    return f"w{width}_step{step:06d}"


def run_scaling_study(preset_name: str, out, *, seed: int = 0, data_dir=None, device: str = "cpu",
                      progress: bool = True, report: bool = True) -> dict:
    """Train every model size to every checkpoint (resumable per cell), evaluate, then (unless `report`
    is False) fit and write the report."""
    from ..data import load_dataset
    from ..estimators import EstimatorConfig
    from ..models import ModelConfig, build_model, parameter_count
    from ..training import TrainConfig, data_info

    check_choice("preset", preset_name, SCALING_PRESETS)
    preset = SCALING_PRESETS[preset_name]
    kw = {"data_dir": data_dir} if preset.dataset == "fashion-mnist" else {}
    train, test = load_dataset(preset.dataset, **kw), load_dataset(preset.dataset, split="test", **kw)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    objective = get_objective(OBJECTIVE)
    sigmas = preset.sigmas()
    curve = cached_floor(out / "optimal_loss.json", train, sigmas,
                         EstimatorConfig(queries=preset.floor_queries), seed=seed, progress=progress)
    draws = eval_draws(train.x, preset.eval_points, preset.eval_draws, objective, seed + 1)
    test_draws = eval_draws(test.x, preset.test_points, preset.eval_draws, objective, seed + 2)
    floor = same_draw_floor(train.rows(), objective, draws, sigmas)
    lam = objective.x0_weight(draws.sigma).numpy()
    floor_summary = {"total": _mean_se(lam * floor["total"]["variance"].numpy()),
                     "levels": [_mean_se(v["variance"].numpy()) for v in floor["levels"]]}
    info = data_info(train, {"name": train.name, "n": None, "seed": 0, "flip": False})
    config = TrainConfig(steps=preset.steps, batch_size=preset.batch_size, lr=preset.lr, warmup=preset.warmup,
                         ema=preset.ema, seed=seed, log_every=max(1, preset.steps // 50),
                         checkpoint_every=max(1, preset.steps // 10))
    sizes = {}
    for w in preset.widths:
        model = ModelConfig(preset.model, train.shape, w)
        sizes[w] = {"parameters": parameter_count(build_model(model)),
                    "flops_per_step": step_flops(train, objective, model, config, device)}
    key = {"preset": asdict(preset), "seed": seed, "floor_fingerprint": curve.fingerprint,
           "objective": objective.name}

    def compute(cell) -> dict:
        w, step = cell
        model = ModelConfig(preset.model, train.shape, w)
        trainer = _train_to(train, objective, model, config, out / "runs" / f"w{w}", step, device, info)
        den = trainer.denoiser()
        return {"width": w, "step": step, **sizes[w], "compute": sizes[w]["flops_per_step"] * step,
                "train_seconds": trainer.elapsed, "cell": key,
                "train": evaluate(den, objective, draws, sigmas, floor, device),
                "test": evaluate(den, objective, test_draws, sigmas, None, device)}

    cells = [(w, s) for w in preset.widths for s in preset.checkpoint_steps()]
    run_cells(cells, lambda c: out / "cells" / f"{cell_name(*c)}.json", compute,
              matches=lambda r: r.get("cell") == key, progress=progress, desc="scaling study",
              name_of=lambda c: cell_name(*c))
    write_json(out / "setup.json", {
        "preset_name": preset_name, "preset": asdict(preset), "seed": seed, "objective": objective.name,
        "data": train.describe(), "test_data": test.describe(),
        "sizes": {str(k): v for k, v in sizes.items()},
        "flop_convention": "torch.utils.flop_counter.FlopCounterMode over forward + backward of one batch "
                           "(2 FLOPs per multiply-add; optimizer, EMA and elementwise ops not counted)",
        "optimal_loss": curve.to_dict(), "curve_total": asdict(curve.total(objective)),
        "same_draw_floor": floor_summary, "eval_draws": len(draws.x0), "test_draws": len(test_draws.x0),
        "checkpoint_steps": preset.checkpoint_steps()})
    return write_scaling_report(out) if report else {}


# -- the report ---------------------------------------------------------------------------------------


def _points(cells: list[dict], setup: dict) -> dict:
    """Arrays over all (width, step) cells: compute, run label, total and per-level losses and floors."""
    cells = sorted(cells, key=lambda c: (c["width"], c["step"]))
    floor = setup["same_draw_floor"]
    return {
        "width": np.array([c["width"] for c in cells]), "step": np.array([c["step"] for c in cells]),
        "parameters": np.array([c["parameters"] for c in cells]),
        "compute": np.array([c["compute"] for c in cells], dtype=float),
        "train": np.array([c["train"]["total"][0] for c in cells]),
        "train_raw": np.array([c["train"]["total_raw"][0] for c in cells]),
        "train_gap": np.array([c["train"]["total_gap"][0] for c in cells]),
        "train_gap_se": np.array([c["train"]["total_gap"][1] for c in cells]),
        "test": np.array([c["test"]["total"][0] for c in cells]),
        "levels": np.array([[v[0] for v in c["train"]["levels"]] for c in cells]),
        "level_gaps": np.array([[v[0] for v in c["train"]["level_gaps"]] for c in cells]),
        "test_levels": np.array([[v[0] for v in c["test"]["levels"]] for c in cells]),
        "floor_total": floor["total"][0], "floor_levels": np.array([v[0] for v in floor["levels"]]),
    }


def _frontier_fits(compute, loss, floor, runs, n_boot, seed, floor_stderr=0.0) -> tuple[np.ndarray, dict]:
    """The three forms fitted on the compute-optimal frontier (lower envelope over runs)."""
    idx = scaling.compute_frontier(compute, loss)
    if len(idx) < 3:
        return idx, {}
    fits = scaling.fit_all(compute[idx], loss[idx], floor, groups=runs[idx], n_boot=n_boot, seed=seed,
                           floor_stderr=floor_stderr)
    return idx, fits


def _fit_summary(fits: dict) -> dict:
    out = {form: f.to_dict() for form, f in fits.items()}
    if "corrected" in fits:
        out["corrected_minus_plain"] = {
            s: scaling.paired_difference(fits["corrected"], fits["plain"], s).to_dict()
            for s in ("rho", "r2")}
    return out


def write_scaling_report(out) -> dict:
    """Fits, tables, CSVs and figures from the finished cells under `out`."""
    import json

    out = Path(out)
    setup = json.loads((out / "setup.json").read_text())
    preset = setup["preset"]
    cells = load_cells(out / "cells", "*.json")
    p = _points(cells, setup)
    sigmas = np.asarray(setup["optimal_loss"]["sigma"])
    curve_floor = np.asarray(setup["optimal_loss"]["loss"])
    curve_se = np.asarray(setup["optimal_loss"]["stderr"])
    seed, n_boot = setup["seed"], preset["n_boot"]
    floor = p["floor_total"]
    # J (Rao-Blackwellised on the evaluation draws) = same-draw J* + the non-negative paired gap.
    j_train = floor + p["train_gap"]

    report = {"setup": {k: setup[k] for k in ("preset_name", "preset", "seed", "objective", "sizes",
                                               "flop_convention", "curve_total", "same_draw_floor",
                                               "eval_draws", "test_draws")}}
    idx, fits = _frontier_fits(p["compute"], j_train, floor, p["width"], n_boot, seed)
    report["frontier"] = {"points": idx.tolist(), "fits": _fit_summary(fits),
                          "floor": floor, "free_E_minus_floor": fits["free"].floor - floor if fits else None}
    report["per_size"] = {}
    for w in sorted(set(p["width"].tolist())):
        sel = np.nonzero(p["width"] == w)[0]
        report["per_size"][str(w)] = _fit_summary(scaling.fit_all(p["compute"][sel], j_train[sel], floor,
                                                                   n_boot=n_boot, seed=seed))
    per_sigma = []
    for k, s in enumerate(sigmas):
        j_k = p["floor_levels"][k] + p["level_gaps"][:, k]
        idx_k, fits_k = _frontier_fits(p["compute"], j_k, p["floor_levels"][k], p["width"], n_boot, seed)
        row = {"sigma": float(s), "floor": float(p["floor_levels"][k]), "curve_floor": float(curve_floor[k]),
               "curve_floor_se": float(curve_se[k]), "frontier_points": len(idx_k)}
        if fits_k:
            row.update(_fit_summary(fits_k))
        per_sigma.append(row)
    report["per_sigma"] = per_sigma
    # Held out: the training-set J* is not a floor there; fit with it anyway and see.  J*_train is the
    # same-draw estimate (its SE propagated), not the curve's interpolated total.
    value, se = setup["same_draw_floor"]["total"]
    tot = {"value": value, "stderr": se}
    idx_t, fits_t = _frontier_fits(p["compute"], p["test"], value, p["width"], n_boot, seed, floor_stderr=se)
    report["held_out"] = {"points": idx_t.tolist(), "floor": tot["value"], "fits": _fit_summary(fits_t),
                          "below_floor_points": int(np.sum(p["test"] <= tot["value"]))}
    write_json(out / "scaling.json", report)

    rows = []
    for i in range(len(p["compute"])):
        rows.append({"width": int(p["width"][i]), "parameters": int(p["parameters"][i]),
                     "step": int(p["step"][i]),
                     "compute_flops": f"{p['compute'][i]:.6e}", "train_loss": f"{p['train'][i]:.6g}",
                     "train_loss_raw": f"{p['train_raw'][i]:.6g}",
                     "train_gap": f"{p['train_gap'][i]:.6g}", "train_gap_se": f"{p['train_gap_se'][i]:.3g}",
                     "train_floor_same_draws": f"{floor:.6g}", "test_loss": f"{p['test'][i]:.6g}",
                     "on_frontier": int(i in set(idx.tolist()))})
    atomic_write_text(out / "points.csv", csv_text(rows, list(rows[0])))
    level_rows = []
    for i in range(len(p["compute"])):
        for k, s in enumerate(sigmas):
            level_rows.append({"width": int(p["width"][i]), "step": int(p["step"][i]), "sigma": f"{s:.6g}",
                               "train_x0_loss": f"{p['levels'][i, k]:.6g}",
                               "train_gap": f"{p['level_gaps'][i, k]:.6g}",
                               "floor_same_draws": f"{p['floor_levels'][k]:.6g}",
                               "curve_floor": f"{curve_floor[k]:.6g}",
                               "test_x0_loss": f"{p['test_levels'][i, k]:.6g}"})
    atomic_write_text(out / "levels.csv", csv_text(level_rows, list(level_rows[0])))
    atomic_write_text(out / "table.md", scaling_tables(report))
    plot_scaling_total(p, j_train, report, out / "scaling_total.png")
    variance = setup["optimal_loss"]["data_variance"]
    plot_scaling_sigma(p, sigmas, report, out / "scaling_sigma.png", variance)
    plot_scaling_rho(report, out / "rho_by_sigma.png", get_objective(setup["objective"]))
    return report


def _ci(fit: dict, key: str, digits: int = 3) -> str:
    lo, hi = fit[f"{key}_ci"]
    return f"{fit[key]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _form_rows(fits: dict) -> list[list[str]]:
    rows = []
    for form in scaling.FORMS:
        if form not in fits:
            continue
        f = fits[form]
        rows.append([form, _ci(f, "rho", 4), _ci(f, "r2", 4), _ci(f, "alpha", 4),
                     f"{f['floor']:.4g}" + (f" [{f['floor_ci'][0]:.4g}, {f['floor_ci'][1]:.4g}]"
                                            if form == "free" else ""),
                     f"{f['extrapolation_error']:.4f}", str(len(f["below_floor"]))])
    return rows


HEAD = ["form", "ρ [95% CI]", "R² (log J) [95% CI]", "α [95% CI]", "floor", "extrap. error", "≤ floor"]


def scaling_tables(report: dict) -> str:
    """The markdown tables: forms on the frontier (train and held out), per size, per sigma."""
    parts = [markdown_table(HEAD, _form_rows(report["frontier"]["fits"]),
                            "Total EDM loss, compute-optimal frontier (training data)")]
    diff = report["frontier"]["fits"].get("corrected_minus_plain")
    if diff:
        d = diff["rho"]
        parts.append(f"ρ(corrected) − ρ(plain) = {d['value']:+.4f}, paired 95% CI "
                     f"[{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]\n")
    parts.append(markdown_table(HEAD, _form_rows(report["held_out"]["fits"]),
                                "Total EDM loss on held-out data (J* of the training set subtracted)"))
    size_rows = []
    for w, fits in report["per_size"].items():
        for row in _form_rows(fits):
            size_rows.append([w] + row)
    parts.append(markdown_table(["width"] + HEAD, size_rows, "Per model size (checkpoints of one run)"))
    sig_rows = []
    for r in report["per_sigma"]:
        if "plain" not in r:
            continue
        d = r["corrected_minus_plain"]["rho"]
        free = r["free"]
        sig_rows.append([f"{r['sigma']:.3g}", f"{r['floor']:.4g}", f"{r['plain']['rho']:.4f}",
                         f"{r['corrected']['rho']:.4f}",
                         f"{d['value']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]",
                         f"{free['floor']:.4g} [{free['floor_ci'][0]:.3g}, {free['floor_ci'][1]:.3g}]",
                         f"{r['plain']['extrapolation_error']:.4f}",
                         f"{r['corrected']['extrapolation_error']:.4f}"])
    parts.append(markdown_table(["σ", "J*(σ)", "ρ plain", "ρ corrected", "Δρ [95% CI]", "free E [95% CI]",
                                 "extrap. plain", "extrap. corrected"], sig_rows,
                                "Per noise level, x0 loss on the frontier"))
    return "\n".join(parts)


# -- figures -----------------------------------------------------------------------------------------


def _fit_line(ax, fit: dict, compute, subtract: float, **style) -> None:
    f = np.geomspace(compute.min(), compute.max(), 100)
    ax.plot(f, fit["floor"] - subtract + fit["beta"] * f ** fit["alpha"], **style)


def _by_width(ax, p, y, marker="o") -> None:
    for i, w in enumerate(sorted(set(p["width"].tolist()))):
        sel = p["width"] == w
        ax.plot(p["compute"][sel], y[sel], marker + "-", color=f"C{i}", ms=3, lw=1, alpha=0.8,
                label=f"width {w} ({p['parameters'][sel][0] / 1e3:.0f}k params)")


def plot_scaling_total(p: dict, j_train: np.ndarray, report: dict, path) -> None:
    """J - J* against compute per model size with the frontier and its fits; J with the plain and free
    fits; the held-out loss minus the training J*."""
    import matplotlib.pyplot as plt

    from ..plots import save_figure

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    fig.subplots_adjust(wspace=0.32)
    fits, floor = report["frontier"]["fits"], report["frontier"]["floor"]
    idx = np.asarray(report["frontier"]["points"], dtype=int)
    ax = axes[0]
    _by_width(ax, p, j_train - floor)
    ax.plot(p["compute"][idx], j_train[idx] - floor, "ks", ms=5, mfc="none", label="compute-optimal frontier")
    if fits:
        c = fits["corrected"]
        _fit_line(ax, c, p["compute"], floor, color="k", lw=2,
                  label=f"corrected: {c['beta']:.3g} F^{c['alpha']:.3f}, ρ = {c['rho']:.4f}")
    ax.set(xscale="log", yscale="log", xlabel="training compute F (FLOPs)", ylabel="J − J* (EDM, per dim)",
           title=f"(a) gap to the floor J* = {floor:.4g}")
    ax.legend(fontsize=7)
    ax = axes[1]
    _by_width(ax, p, j_train)
    ax.axhline(floor, color="k", ls=":", lw=1, label="J* (same draws)")
    if fits:
        pl, fr = fits["plain"], fits["free"]
        _fit_line(ax, pl, p["compute"], 0.0, color="k", lw=2, ls="--",
                  label=f"plain: {pl['beta']:.3g} F^{pl['alpha']:.3f}, ρ = {pl['rho']:.4f}")
        _fit_line(ax, fr, p["compute"], 0.0, color="C3", lw=2,
                  label=f"free: {fr['floor']:.3g} + {fr['beta']:.3g} F^{fr['alpha']:.3f}")
    ax.set(xscale="log", yscale="log", xlabel="training compute F (FLOPs)", ylabel="J (EDM, per dim)",
           title="(b) total loss, plain and free-E fits")
    ax.legend(fontsize=7)
    ax = axes[2]
    held = report["held_out"]
    gap = p["test"] - held["floor"]
    pos = gap > 0
    for i, w in enumerate(sorted(set(p["width"].tolist()))):
        sel = (p["width"] == w) & pos
        ax.plot(p["compute"][sel], gap[sel], "o-", color=f"C{i}", ms=3, lw=1, alpha=0.8)
    if held["fits"]:
        c = held["fits"]["corrected"]
        _fit_line(ax, c, p["compute"], held["floor"], color="k", lw=2,
                  label=f"corrected: ρ = {c['rho']:.4f}, α = {c['alpha']:.3f}")
        ax.legend(fontsize=7)
    ax.set(xscale="log", yscale="log", xlabel="training compute F (FLOPs)",
           ylabel="J_held-out − J*_train",
           title=f"(c) held-out data ({held['below_floor_points']} points at or below J*_train)")
    save_figure(fig, path)


HIGHLIGHT_FRACTIONS = (1e-3, 0.5, 0.9, 0.99)  # J*(sigma) / data variance of the levels drawn


def _highlight(report: dict, variance: float, fractions=HIGHLIGHT_FRACTIONS) -> list[int]:
    """Fitted levels whose J*/variance is nearest (in log) to each fraction: memorised, transition, high."""
    fitted = [k for k, r in enumerate(report["per_sigma"]) if "plain" in r]
    ratio = np.log(np.maximum([report["per_sigma"][k]["floor"] / variance for k in fitted], 1e-12))
    picks = [fitted[int(np.argmin(np.abs(ratio - np.log(f))))] for f in fractions]
    return list(dict.fromkeys(picks))


def plot_scaling_sigma(p: dict, sigmas, report: dict, path, variance: float) -> None:
    """Per-sigma x0-loss gaps to J*(sigma) against compute, with the corrected and plain fits."""
    import matplotlib.pyplot as plt

    from ..plots import save_figure

    levels = _highlight(report, variance)
    fig, axes = plt.subplots(2, len(levels), figsize=(5 * len(levels), 8), squeeze=False)
    for col, k in enumerate(levels):
        r = report["per_sigma"][k]
        gap = p["level_gaps"][:, k]
        j = r["floor"] + gap
        ax = axes[0, col]
        pos = gap > 0
        for i, w in enumerate(sorted(set(p["width"].tolist()))):
            sel = (p["width"] == w) & pos
            ax.plot(p["compute"][sel], gap[sel], "o-", color=f"C{i}", ms=3, lw=1, alpha=0.8,
                    label=f"width {w}")
        _fit_line(ax, r["corrected"], p["compute"], r["floor"], color="k", lw=2,
                  label=f"corrected, ρ = {r['corrected']['rho']:.3f}")
        ax.set(xscale="log", yscale="log", xlabel="compute F (FLOPs)", ylabel="x0 loss − J*(σ)",
               title=f"σ = {sigmas[k]:.3g}, J*(σ) = {r['floor']:.3g} ({r['floor'] / variance:.1%} of var.)")
        ax.legend(fontsize=7)
        ax = axes[1, col]
        for i, w in enumerate(sorted(set(p["width"].tolist()))):
            sel = p["width"] == w
            ax.plot(p["compute"][sel], j[sel], "o-", color=f"C{i}", ms=3, lw=1, alpha=0.8)
        ax.axhline(r["floor"], color="k", ls=":", lw=1, label="J*(σ)")
        _fit_line(ax, r["plain"], p["compute"], 0.0, color="k", lw=2, ls="--",
                  label=f"plain, ρ = {r['plain']['rho']:.3f}")
        _fit_line(ax, r["free"], p["compute"], 0.0, color="C3", lw=2,
                  label=f"free, E = {r['free']['floor']:.3g}")
        ax.set(xscale="log", yscale="log", xlabel="compute F (FLOPs)", ylabel="x0 loss J(σ)")
        ax.legend(fontsize=7)
    save_figure(fig, path)


def _sigma_quantile(objective, q: float) -> float:
    """The sigma below which a fraction q of the objective's training noise levels fall."""
    grid = np.linspace(-12.0, 12.0, 4801)
    cdf = objective.cdf(torch.tensor(grid)).numpy()
    return float(math.exp(np.interp(q, cdf, grid)))


def plot_scaling_rho(report: dict, path, objective) -> None:
    """rho of the plain and the corrected fit per sigma level, with 95% intervals; sigma levels that the
    objective's p(sigma) rarely trains are shaded."""
    import matplotlib.pyplot as plt

    from ..plots import save_figure

    rows = [r for r in report["per_sigma"] if "plain" in r]
    sig = np.array([r["sigma"] for r in rows])
    rare = _sigma_quantile(objective, TRAINED_QUANTILE)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12.5, 4.5))
    for axis in (ax, bx):
        axis.axvspan(rare, sig.max() * 1.3, color="0.9", lw=0,
                     label=f"σ above {TRAINED_QUANTILE:.0%} of {objective.name}'s training p(σ)")
    for offset, form, color in ((0.97, "plain", "C0"), (1.03, "corrected", "C3")):
        rho = np.array([r[form]["rho"] for r in rows])
        ci = np.array([r[form]["rho_ci"] for r in rows])
        ax.errorbar(sig * offset, rho, yerr=[rho - ci[:, 0], ci[:, 1] - rho], fmt="o-", color=color, ms=4,
                    capsize=2, label=f"{form}" + (" (J − J*)" if form == "corrected" else " (J)"))
    ax.set(xscale="log", xlabel="σ", ylabel="ρ (|Pearson r| of the log-log line)",
           title="ρ per noise level on the compute-optimal frontier")
    ax.legend(fontsize=8, loc="lower left")
    d = np.array([r["corrected_minus_plain"]["rho"]["value"] for r in rows])
    ci = np.array([r["corrected_minus_plain"]["rho"]["ci"] for r in rows])
    bx.errorbar(sig, d, yerr=[d - ci[:, 0], ci[:, 1] - d], fmt="o-", color="k", ms=4, capsize=2)
    bx.axhline(0, color="gray", lw=1)
    bx.set(xscale="log", xlabel="σ", ylabel="ρ(corrected) − ρ(plain)",
           title="paired difference (95% CI, model sizes resampled)")
    save_figure(fig, path)


def scaling_terminal_table(report: dict) -> str:
    """The frontier fits and the per-sigma rho comparison as plain text for the terminal."""
    from .common import text_table

    lines = ["total EDM loss on the compute-optimal frontier (training data):",
             text_table(HEAD, _form_rows(report["frontier"]["fits"]))]
    rows = [[f"{r['sigma']:.3g}", f"{r['plain']['rho']:.4f}", f"{r['corrected']['rho']:.4f}",
             "{value:+.4f} [{0:+.4f}, {1:+.4f}]".format(*r["corrected_minus_plain"]["rho"]["ci"],
                                                       value=r["corrected_minus_plain"]["rho"]["value"])]
            for r in report["per_sigma"] if "plain" in r]
    lines += ["rho per noise level (frontier):",
              text_table(["σ", "ρ plain", "ρ corrected", "Δρ [95% CI]"], rows)]
    return "\n".join(lines)
