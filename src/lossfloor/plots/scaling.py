"""Figures of the scaling study: total loss against compute with fits, per-sigma laws, rho by sigma."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import NullFormatter

from lossfloor.plots.common import save_figure

TRAINED_QUANTILE = 0.99  # the rho figure shades sigma above this quantile of the objective's p(sigma)


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
           title="paired difference (95% CI, runs resampled, frontier re-chosen)")
    for axis in (ax, bx):
        axis.xaxis.set_minor_formatter(NullFormatter())  # no overlapping minor labels on a short log axis
    save_figure(fig, path)
