"""Diagnose a denoiser against the optimal loss J*(sigma) (users' own loops: `train.monitor.GapMonitor`).

The model's x0 loss at a noise level is E ||D(x0 + sigma eps, sigma) - x0||^2 / D over the data, the same
normalisation as J*; on the training data it can never be below J* (the posterior mean is optimal), so a
value below J* beyond 3 standard errors means a bug in the evaluation or the data pipeline.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from lossfloor.floor.config import LevelEstimate, level_generator, stratified_sources
from lossfloor.floor.critical import band_edges, band_rows, band_summary
from lossfloor.floor.curve import MODEL_KIND, OptimalLossCurve
from lossfloor.nets.denoiser import x0_loss
from lossfloor.objective.objective import Objective

VIOLATION_SE = 3.0  # standard errors below J* that count as impossible
ROUND_OFF = 1e-6  # gaps smaller than this fraction of the data variance are float32 round-off, never flagged


@dataclass(frozen=True)
class LevelGap:
    """Model loss and optimal loss at one sigma, per dimension, with standard errors."""

    sigma: float
    model_loss: float
    model_stderr: float
    optimal_loss: float
    optimal_stderr: float
    data_variance: float

    @property
    def gap(self) -> float:
        return self.model_loss - self.optimal_loss

    @property
    def gap_stderr(self) -> float:
        return math.hypot(self.model_stderr, self.optimal_stderr)

    @property
    def relative_gap(self) -> float:
        """The gap as a fraction of the per-dimension data variance."""
        return self.gap / self.data_variance

    @property
    def below_floor(self) -> bool:
        """True when the model beats J* by more than VIOLATION_SE standard errors (impossible on train)."""
        return self.gap < -(VIOLATION_SE * self.gap_stderr + ROUND_OFF * self.data_variance)

    def to_dict(self) -> dict:
        return {**asdict(self), "gap": self.gap, "gap_stderr": self.gap_stderr,
                "relative_gap": self.relative_gap, "below_floor": self.below_floor}


def _device_of(denoiser, fallback) -> torch.device:
    """Where a module's parameters live (the fallback for plain callables)."""
    params = list(denoiser.parameters()) if isinstance(denoiser, torch.nn.Module) else []
    return params[0].device if params else fallback


@torch.no_grad()
def model_level(denoiser, x: Tensor, sigma: float, queries: int, generator: torch.Generator,
                batch_size: int = 512, std: Tensor | None = None) -> LevelEstimate:
    """The denoiser's per-dimension x0 loss at sigma on data x, from `queries` noisy copies (stratified).
    With `std` (a Gaussian mixture, data/latents.py) each clean point is a fresh z = x + std eps' and the loss
    is measured against z, as the model was trained and as the mixture's J* is defined."""
    device = _device_of(denoiser, x.device)
    sources = stratified_sources(len(x), queries, generator)
    losses = []
    for idx in sources.split(batch_size):
        x0 = x[idx].to(device)
        if std is not None:
            x0 = x0 + std[idx].to(device) * torch.randn(x0.shape, generator=generator).to(device)
        eps = torch.randn(x0.shape, generator=generator).to(device)
        losses.append(x0_loss(denoiser, x0, sigma, eps).cpu())
    values = torch.cat(losses)
    return LevelEstimate(float(sigma), values.mean().item(), values.std().item() / math.sqrt(len(values)),
                         len(values))


def model_curve(denoiser, x: Tensor, sigmas, queries: int, seed: int = 0, progress=None,
                std: Tensor | None = None) -> OptimalLossCurve:
    """The denoiser's x0 loss on a sigma grid, in the optimal-loss curve's container (for `total`); with
    `std` on z drawn from the Gaussian mixture (`model_level`)."""
    levels = []
    for s in sigmas:
        levels.append(model_level(denoiser, x, float(s), queries, level_generator(seed + 1, float(s)),
                                  std=std))
        if progress is not None:
            progress(1)
    rows = x.reshape(len(x), -1).double()
    variance = rows.var(0, unbiased=False).mean().item()
    if std is not None:  # the mixture's variance: between the means plus within the components
        variance += std.double().pow(2).mean().item()
    return OptimalLossCurve([e.sigma for e in levels], [e.loss for e in levels], [e.stderr for e in levels],
                            variance, len(x), rows.shape[1],
                            settings={"queries": queries, "seed": seed, "kind": MODEL_KIND})


def compare(model: OptimalLossCurve, optimal: OptimalLossCurve) -> list[LevelGap]:
    """Per-level gaps of a model curve against J* (interpolated where the grids differ)."""
    exact = len(model.sigma) == len(optimal.sigma) and np.allclose(model.sigma, optimal.sigma, rtol=1e-9)
    j_star = optimal.loss if exact else optimal(model.sigma)
    j_se = optimal.stderr if exact else np.interp(np.log(model.sigma), np.log(optimal.sigma), optimal.stderr)
    return [LevelGap(float(s), float(m), float(me), float(j), float(je), optimal.data_variance)
            for s, m, me, j, je in zip(model.sigma, model.loss, model.stderr, j_star, j_se, strict=True)]


@dataclass
class Diagnosis:
    """A model against the optimal loss: per-level gaps (train, optionally test) and objective totals."""

    objective: str
    train: list[LevelGap]
    totals: dict  # split -> {model, model_stderr, optimal, optimal_stderr, gap, gap_stderr, extrapolated}
    test: list[LevelGap] | None = None
    model_curves: dict = field(default_factory=dict, repr=False)  # split -> the model's loss curve
    bands: dict = field(default_factory=dict)  # split -> `gap_bands` rows: each sigma band's weighted gap
    profile: dict = field(default_factory=dict, repr=False)  # split -> `gap_profile` (the figure's panel)

    @property
    def violations(self) -> list[LevelGap]:
        """Training-data levels where the model is below J* beyond VIOLATION_SE standard errors."""
        return [g for g in self.train if g.below_floor]

    def to_dict(self) -> dict:
        return {"objective": self.objective, "train": [g.to_dict() for g in self.train],
                "test": None if self.test is None else [g.to_dict() for g in self.test],
                "totals": self.totals, "floor_violation": bool(self.violations),
                "violation_sigmas": [g.sigma for g in self.violations], "gap_bands": self.bands}

    def band_lines(self) -> list[str]:
        """Where the objective-weighted gap is, one line per split ("62% of the gap at sigma < 0.5, ...")."""
        return [f"where the gap is ({split}): {band_summary(rows)}" for split, rows in self.bands.items()]

    def bands_csv_text(self) -> str:
        """One row per (split, sigma band): its range, weighted gap and share of the total gap."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["split", "sigma_lo", "sigma_hi", "weighted_gap", "share"],
                                lineterminator="\n")
        writer.writeheader()
        for split, rows in self.bands.items():
            writer.writerows({"split": split, **row} for row in rows)
        return buf.getvalue()

    def csv_text(self) -> str:
        """One row per (split, sigma)."""
        buf = io.StringIO()
        fields = ["split", *self.train[0].to_dict()]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for split, gaps in (("train", self.train), ("test", self.test or [])):
            for g in gaps:
                writer.writerow({"split": split, **g.to_dict()})
        return buf.getvalue()


def totals(model: OptimalLossCurve, optimal: OptimalLossCurve, objective: Objective) -> dict:
    """The objective's total model loss, total optimal loss and total gap, per dimension (the model's loss
    below the grid extrapolated as a model's, ~ sigma^2: `floor.interpolation.below_grid`)."""
    m, o = _as_model(model).total(objective), optimal.total(objective)
    return {"model": m.value, "model_stderr": m.stderr, "optimal": o.value, "optimal_stderr": o.stderr,
            "gap": m.value - o.value, "gap_stderr": math.hypot(m.stderr, o.stderr),
            "model_extrapolated": m.extrapolated, "optimal_extrapolated": o.extrapolated,
            "model_below_grid_error": m.below_grid_error, "optimal_below_grid_error": o.below_grid_error}


def _as_model(curve: OptimalLossCurve) -> OptimalLossCurve:
    return curve if curve.is_model else replace(curve, settings={**curve.settings, "kind": MODEL_KIND})


def gap_bands(model: OptimalLossCurve, optimal: OptimalLossCurve, objective: Objective, edges=None) -> list:
    """Each sigma band's part of the objective-weighted total gap (`floor.critical.band_rows`), from the two
    curves' totals split at `edges` (default: sigma* x {0.1, 1, 10}, sigma* of J*); the parts add up to
    `totals(...)["gap"]`."""
    edges = band_edges(optimal.critical_sigma()) if edges is None else np.asarray(edges, dtype=float)
    if not len(edges):
        return []
    parts = _as_model(model).split_total(objective, edges) - optimal.split_total(objective, edges)
    return band_rows(edges, parts)


def gap_profile(model: OptimalLossCurve, optimal: OptimalLossCurve, objective: Objective,
                per_decade: int = 4) -> dict:
    """The weighted gap per log-sigma bin (`per_decade` bins a decade over the model's grid), divided by the
    bin's width in log10 sigma: the density whose integral over the grid is the total gap's part there
    (the parts below and above the grid, extrapolated, are in `gap_bands`'s end bands)."""
    lo, hi = math.log10(model.sigma[0]), math.log10(model.sigma[-1])
    edges = np.logspace(lo, hi, max(2, round((hi - lo) * per_decade)) + 1)
    parts = _as_model(model).split_total(objective, edges) - optimal.split_total(objective, edges)
    return {"edges": edges.tolist(), "density": (parts[1:-1] / np.diff(np.log10(edges))).tolist()}


def diagnose(denoiser, objective: Objective, optimal: OptimalLossCurve, train_x: Tensor, *,
             test_x: Tensor | None = None, queries: int = 1024, seed: int = 0, progress=None,
             sigmas=None, train_std: Tensor | None = None, test_std: Tensor | None = None) -> Diagnosis:
    """Evaluate the denoiser on the training (and test) data at `sigmas` (default: J*'s levels; J* is
    interpolated elsewhere) and compare.  `train_std` / `test_std`: the data are Gaussian mixtures (stochastic
    latents) and the model is scored on z drawn from them, against the mixture's J*."""
    sigmas = optimal.sigma if sigmas is None else sigmas
    model = model_curve(denoiser, train_x, sigmas, queries, seed, progress, std=train_std)
    result = Diagnosis(objective.name, compare(model, optimal), {"train": totals(model, optimal, objective)},
                       model_curves={"train": model})
    if test_x is not None:
        held_out = model_curve(denoiser, test_x, sigmas, queries, seed, progress, std=test_std)
        result.test = compare(held_out, optimal)
        result.totals["test"] = totals(held_out, optimal, objective)
        result.model_curves["test"] = held_out
    for split, curve in result.model_curves.items():
        result.bands[split] = gap_bands(curve, optimal, objective)
        result.profile[split] = gap_profile(curve, optimal, objective)
    return result


def violation_message(diagnosis: Diagnosis) -> str:
    """The loud warning printed when the model beats the floor on its training data."""
    where = ", ".join(f"sigma={g.sigma:.3g} (gap {g.gap:.3g} ± {g.gap_stderr:.2g})"
                      for g in diagnosis.violations)
    return ("IMPOSSIBLE: the model's loss is below the optimal loss J* on the training data at " + where
            + ". No denoiser can beat the posterior mean, so the model evaluation or the data pipeline is "
              "wrong (different normalisation, data subset, flip or dataset than J* was computed on?).")
