"""Plotting helpers shared by the commands: matplotlib (Agg), written atomically."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .curve import OptimalLossCurve, atomic_write_bytes  # noqa: E402
from .formulation import Objective  # noqa: E402

WEIGHT_DYNAMIC_RANGE = 1e12  # the lambda * p axis stops this many orders below its maximum
ATOM_BINS_PER_DECADE = 10  # discrete objectives: atoms are counted in bins this wide


def save_figure(fig, path) -> None:
    """Save a figure as PNG atomically (rendered in memory, then written and renamed) and close it."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def weight_density(objective: Objective, sigma: np.ndarray) -> np.ndarray:
    """lambda(sigma) p(log sigma) on a log-spaced sigma grid; discrete objectives are binned on it."""
    sigma = np.asarray(sigma, dtype=float)
    if not objective.is_discrete:
        log_p = objective.log_density(torch.tensor(np.log(sigma))).numpy()
        lam = objective.x0_weight(torch.tensor(sigma)).numpy()
        return np.where(np.isfinite(log_p), np.exp(log_p), 0.0) * lam
    # Atoms of equal mass: sum lambda / T over the atoms in each log-sigma bin, divided by its width.
    atoms = objective.atoms().numpy()
    lam = objective.x0_weight(torch.tensor(atoms)).numpy()
    log_lo, log_hi = np.log10(sigma[0]), np.log10(sigma[-1])
    edges = np.linspace(log_lo, log_hi, max(2, round((log_hi - log_lo) * ATOM_BINS_PER_DECADE)) + 1)
    mass, _ = np.histogram(np.log10(atoms), bins=edges, weights=lam / len(atoms))
    density = mass / (np.diff(edges) * np.log(10))  # per unit natural log sigma, as p(log sigma)
    return density[np.clip(np.searchsorted(edges, np.log10(sigma), side="right") - 1, 0, len(density) - 1)]


def plot_curve(curve: OptimalLossCurve, objective: Objective, path, title: str = "") -> None:
    """J*(sigma) on a log axis with its data-variance asymptote, the critical sigma and the
    objective's lambda(sigma) p(log sigma) on a second axis."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.fill_between(curve.sigma, curve.loss - 2 * curve.stderr, curve.loss + 2 * curve.stderr,
                    color="C0", alpha=0.25, lw=0, label="± 2 standard errors")
    ax.plot(curve.sigma, curve.loss, "o-", color="C0", ms=3, label="optimal loss J*(σ) per dimension")
    ax.axhline(curve.data_variance, color="k", ls="--", lw=1,
               label=f"data variance {curve.data_variance:.4g} (σ → ∞ limit)")
    critical = curve.critical_sigma()
    if math.isfinite(critical):
        ax.axvline(critical, color="C3", ls=":", lw=1.5,
                   label=f"critical σ ≈ {critical:.3g} (J* > 1% of variance)")
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
