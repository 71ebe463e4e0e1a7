"""The commands' figures: the optimal-loss curve with lambda*p, samples, and a model's diagnosis."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from lossfloor.floor.critical import band_label
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.objective.objective import Objective
from lossfloor.plots.common import (
    WEIGHT_DYNAMIC_RANGE,
    critical_sigma_of,
    gap_limits,
    gap_linthresh,
    mark_critical_sigma,
    save_figure,
    symlog_decade_ticks,
    weight_density,
)


def plot_curve(curve: OptimalLossCurve, objective: Objective, path, title: str = "") -> None:
    """J*(sigma) on a log axis with its data-variance asymptote, the critical sigma and the
    objective's lambda(sigma) p(log sigma) on a second axis."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.fill_between(curve.sigma, curve.loss - 2 * curve.stderr, curve.loss + 2 * curve.stderr,
                    color="C0", alpha=0.25, lw=0, label="± 2 standard errors")
    ax.plot(curve.sigma, curve.loss, "o-", color="C0", ms=3, label="optimal loss J*(σ) per dimension")
    ax.axhline(curve.data_variance, color="k", ls="--", lw=1,
               label=f"data variance {curve.data_variance:.4g} (σ → ∞ limit)")
    mark_critical_sigma(ax, curve.critical_sigma())
    ax.set_xscale("log")
    ax.set_xlabel("noise level σ (VE: σ_t / α_t)")
    ax.set_ylabel("J*(σ)  (per-dimension x0 MSE)")
    ax.set_ylim(bottom=min(0.0, float(np.min(curve.loss - 2 * curve.stderr))), top=1.08 * curve.data_variance)

    twin = ax.twinx()
    grid = np.geomspace(curve.sigma[0], curve.sigma[-1], 400)
    density = weight_density(objective, grid)
    shown = density > density.max() / WEIGHT_DYNAMIC_RANGE
    if shown.any():
        twin.plot(grid[shown], density[shown], color="C1", lw=1.2, label=f"λ(σ)·p(log σ) of {objective.name}")
        twin.set_yscale("log")
    twin.set_ylabel(f"{objective.name}: weight × density", color="C1")
    twin.tick_params(axis="y", colors="C1")

    lines = ax.get_legend_handles_labels()
    twin_lines = twin.get_legend_handles_labels()
    ax.legend(lines[0] + twin_lines[0], lines[1] + twin_lines[1], loc="upper center", fontsize=8, ncol=2,
              bbox_to_anchor=(0.5, -0.14), frameon=False)  # below the axes: never hides a curve
    ax.set_title(title or f"Optimal loss (N = {curve.n}, D = {curve.dim})", fontsize=10)
    save_figure(fig, path)


def plot_samples(x: torch.Tensor, path, reference: torch.Tensor | None = None, title: str = "") -> None:
    """Images (N, C, H, W) in [-1, 1] as a grid; points as a scatter of the first two coordinates over
    the reference data in grey."""
    x = x.detach().cpu().float()
    if x.dim() == 4:
        n, c, h, w = x.shape
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c))
        pixels = ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        for i in range(n):
            r, k = divmod(i, cols)
            grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + k * (w + 1):1 + k * (w + 1) + w] = pixels[i]
        fig, ax = plt.subplots(figsize=(min(12, 0.35 * cols * max(w, 8) / 8 + 1),) * 2)
        ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
    else:
        pts = x.reshape(len(x), -1)
        if pts.shape[1] < 2:
            raise ValueError(f"cannot draw points of shape {tuple(x.shape[1:])}: need 2 or more coordinates")
        fig, ax = plt.subplots(figsize=(5.5, 5.5))
        if reference is not None:
            ref = reference.reshape(len(reference), -1)[:, :2].cpu().numpy()
            ax.scatter(ref[:, 0], ref[:, 1], s=2, color="0.7", label="data")
        ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=3, color="C0", label="samples")
        ax.set_aspect("equal")
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def plot_diagnosis(diagnosis, path, title: str = "") -> None:
    """Model loss and J* against sigma (top), the gap with 2-SE bands (middle, symlog: linear only within
    the smallest standard error, limits fitted to the gaps) and the objective-weighted gap per decade of
    sigma with each band's share (bottom), train and test, with the critical sigma marked on all three."""
    fig, (ax, gap_ax, weighted_ax) = plt.subplots(3, 1, figsize=(7.5, 8.5), sharex=True,
                                                  gridspec_kw={"height_ratios": [3, 2, 2]})
    sig = np.array([g.sigma for g in diagnosis.train])
    j_star = np.array([g.optimal_loss for g in diagnosis.train])
    variance = diagnosis.train[0].data_variance
    ax.plot(sig, j_star, "k-", lw=2, label="optimal loss J*(σ)")
    all_gaps, all_se = [], []
    for split, gaps, color in (("train", diagnosis.train, "C0"), ("test", diagnosis.test, "C1")):
        if not gaps:
            continue
        m = np.array([g.model_loss for g in gaps])
        gap = np.array([g.gap for g in gaps])
        se = np.array([g.gap_stderr for g in gaps])
        all_gaps += list(gap)
        all_se += list(se)
        ax.plot(sig, m, "o-", color=color, ms=3, label=f"model x0 loss ({split})")
        gap_ax.fill_between(sig, gap - 2 * se, gap + 2 * se, color=color, alpha=0.25, lw=0)
        gap_ax.plot(sig, gap, "o-", color=color, ms=3, label=f"gap ({split}) ± 2 SE")
    bad = diagnosis.violations
    if bad:
        gap_ax.plot([g.sigma for g in bad], [g.gap for g in bad], "rx", ms=10, mew=2,
                    label="below the floor: impossible")
    ax.axhline(variance, color="gray", ls="--", lw=1, label="data variance")
    critical = critical_sigma_of(sig, j_star, variance)
    mark_critical_sigma(ax, critical)
    mark_critical_sigma(gap_ax, critical, label=False)
    mark_critical_sigma(weighted_ax, critical, label=False)
    ax.set_xscale("log")
    ax.set_ylabel("per-dimension x0 MSE")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    gap_ax.axhline(0, color="k", lw=0.8)
    linthresh = gap_linthresh(all_gaps, all_se)
    gap_ax.set_yscale("symlog", linthresh=linthresh)
    gap_ax.set_ylim(*gap_limits(all_gaps, all_se, linthresh))
    symlog_decade_ticks(gap_ax, linthresh)
    gap_ax.set_ylabel(f"gap J(σ) − J*(σ)\n(symlog, linear within ±{linthresh:.2g})")
    gap_ax.legend(fontsize=8)
    plot_weighted_gap(weighted_ax, diagnosis)
    weighted_ax.set_xlabel("noise level σ (VE)")
    save_figure(fig, path)


def plot_weighted_gap(ax, diagnosis) -> None:
    """The objective-weighted gap lambda p (J - J*) per decade of sigma over the grid (its integral is the
    total gap's part there), with the train split's band shares (below the grid included) over their
    bands."""
    for (split, profile), color in zip(diagnosis.profile.items(), ("C0", "C1"), strict=False):
        edges, density = np.asarray(profile["edges"]), np.asarray(profile["density"])
        ax.stairs(density, edges, color=color, label=f"weighted gap ({split})")
    train = diagnosis.profile.get("train")
    for row in diagnosis.bands.get("train", []) if train else []:
        lo, hi = train["edges"][0], train["edges"][-1]
        left, right = max(row["sigma_lo"], lo), min(row["sigma_hi"], hi)
        if math.isfinite(row["share"]):
            inside = right > left  # else the band lies beyond the grid: its share is written at that end
            x = math.sqrt(left * right) if inside else (lo if row["sigma_hi"] <= lo else hi)
            text = f"{row['share']:.0%} of the gap" + ("" if inside else f" ({band_label(row)})")
            ax.text(x, 0.04 if inside else 0.5, text, transform=ax.get_xaxis_transform(), fontsize=8,
                    ha="center" if inside else ("left" if x == lo else "right"), va="bottom", color="C0")
        if 0 < row["sigma_lo"] and lo < row["sigma_lo"] < hi:
            ax.axvline(row["sigma_lo"], color="0.6", lw=0.6, ls="--")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel(f"{diagnosis.objective}: λ·p·gap\nper decade of σ")
    if diagnosis.profile:
        ax.legend(fontsize=8, loc="upper left")
