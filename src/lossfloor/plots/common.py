"""Shared figure parts: atomic saving, the lambda*p weight density, image grids and symlog axes."""

from __future__ import annotations

import io
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from lossfloor.core.files import atomic_write_bytes
from lossfloor.floor.critical import critical_sigma
from lossfloor.objective.objective import Objective

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


def image_grid(x: np.ndarray, side: int, rows: int, cols: int, pad: int = 0) -> np.ndarray:
    """Flattened square images (n, side*side) in [-1, 1] tiled row-major into one array, `pad` white pixels
    above and left of each tile."""
    tiles = np.asarray(x)[: rows * cols].reshape(rows, cols, side, side)
    if pad:
        tiles = np.pad(tiles, ((0, 0), (0, 0), (pad, 0), (pad, 0)), constant_values=1)
    return tiles.transpose(0, 2, 1, 3).reshape(rows * tiles.shape[2], cols * tiles.shape[3])


def show_samples(ax, x: np.ndarray, pad: int = 0) -> None:
    """Points (n, 2) as a scatter on [-3, 3]^2, flattened square images as an 8 x 8 (or k x k) grid."""
    ax.set_xticks([])
    ax.set_yticks([])
    if x.shape[1] == 2:
        ax.scatter(x[:, 0], x[:, 1], s=1 if not pad else 2, alpha=0.5 if not pad else 1.0)
        if not pad:
            ax.set(xlim=(-3, 3), ylim=(-3, 3))
        return
    side = int(round(math.sqrt(x.shape[1])))
    k = 8 if not pad else int(math.isqrt(len(x)))
    ax.imshow((image_grid(x, side, k, k, pad) + 1) / 2, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest" if pad else None)


def plot_above(ax, x, y, bottom: float, style: str, label: str, **kw) -> None:
    """A curve on a log y axis that starts at `bottom`: drawn where y > bottom, and at the levels where it is
    below (J* of a finite training set is 0 at small sigma) a downward triangle on the axis floor, so the
    plot shows where the curve leaves zero instead of a vertical cliff."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    shown = y > bottom
    ax.plot(x, np.where(shown, y, np.nan), style, label=label, **kw)
    if not shown.all():
        color = kw.get("color", ax.get_lines()[-1].get_color())
        ax.plot(x[~shown], np.full((~shown).sum(), bottom * 1.6), "v", color=color, ms=5, ls="none",
                label=f"{label.split(' ')[0]} below {bottom:.0e} (≈ 0) here")


# -- diagnosis ---------------------------------------------------------------------------------------


def critical_sigma_of(sigma, optimal_loss, data_variance: float, fraction: float = 0.01) -> float:
    """sigma* of J* levels (`floor.critical.critical_sigma`, as `OptimalLossCurve.critical_sigma`)."""
    return critical_sigma(sigma, optimal_loss, data_variance, fraction).value


def mark_critical_sigma(ax, critical: float | None, label: bool = True) -> None:
    """A dotted vertical line at the critical sigma (J* > 1% of the data variance)."""
    if critical is not None and math.isfinite(critical):  # null in a JSON file: none
        ax.axvline(critical, color="C3", ls=":", lw=1.5,
                   label=f"critical σ* ≈ {critical:.3g} (J* > 1% of variance)" if label else None)


def gap_linthresh(gaps, stderrs) -> float:
    """The linear range of a symlog gap axis: the smallest standard error of any level, so that every gap
    resolved from 0 (the small-sigma ones are tiny but precise) lands on the logarithmic part."""
    se = np.asarray([s for s in stderrs if np.isfinite(s) and s > 0])
    scale = float(np.max(np.abs(gaps))) if len(gaps) else 1.0
    return float(max(se.min() if len(se) else 0.0, 1e-9 * max(scale, 1e-12)))


def gap_limits(gaps, stderrs, linthresh: float, band_room: float = 3.0) -> tuple[float, float]:
    """y limits of a symlog gap axis that fit the gaps: no negative (positive) range beyond the linear one
    when no gap is below (above) 0, and the +-2 SE bands shown up to `band_room` times the largest gap on
    their side, so wide bands never squeeze the gaps into a corner."""
    g, se = np.asarray(gaps, dtype=float), np.nan_to_num(np.asarray(stderrs, dtype=float))
    top_gap, bottom_gap = max(float(g.max()), 0.0), min(float(g.min()), 0.0)
    top = min(float(np.max(g + 2 * se)), band_room * max(top_gap, linthresh))
    bottom = max(float(np.min(g - 2 * se)), -band_room * max(-bottom_gap, linthresh))
    pad = 1.5
    top = pad * max(top, linthresh) if top_gap > 0 else linthresh
    bottom = pad * min(bottom, -linthresh) if bottom_gap < 0 else -linthresh
    return bottom, top


def symlog_decade_ticks(ax, linthresh: float, most: int = 5) -> None:
    """At most `most` labelled decades on each side of a symlog y axis (and 0), so labels never collide."""
    lo, hi = ax.get_ylim()
    first = math.floor(math.log10(linthresh)) + 1  # the decade at the threshold would sit on the 0 label
    ticks = [0.0]
    for sign, end in ((1, hi), (-1, -lo)):
        if end > linthresh:
            decades = list(range(first, math.ceil(math.log10(end)) + 1))
            step = max(1, math.ceil(len(decades) / most))
            ticks += [sign * 10.0**k for k in decades[::-1][::step]]
    ax.set_yticks(sorted(ticks))
    ax.set_ylim(lo, hi)
