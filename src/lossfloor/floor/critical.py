"""The critical sigma sigma* (where J* first reaches a fraction of the data variance) and the sigma bands
around it that a diagnosis splits its total gap into.

sigma* is the crossing J*(sigma) / V = fraction of the curve's own monotone interpolant (PCHIP in
logit(J*/V) against log sigma, `interpolation.interpolate_loss`), found between the two grid levels that
bracket it, so it does not move with the grid the way the smallest grid level above the fraction did.
Its interpolation uncertainty is the distance (in sigma) to the crossing of the piecewise-linear
interpolant in the same coordinates times LINEAR_SAFETY, capped by the bracketing levels (J* is
monotone, so the crossing lies between them).  On the exact two-point curve the true error was within
that at 8 to 200 levels over sigma in [0.01, 100] (at 8 levels 0.011 against 2 x 0.0049).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from lossfloor.floor.interpolation import interpolate_loss, tail_scale

CRITICAL_FRACTION = 0.01
BAND_FACTORS = (0.1, 1.0, 10.0)  # the diagnosis's band edges, in units of sigma*
LINEAR_SAFETY = 2.5  # the PCHIP-linear distance of the crossing, times this, is its uncertainty


@dataclass(frozen=True)
class CriticalSigma:
    """sigma* with its interpolation uncertainty (`error`, in sigma) and the grid levels bracketing it."""

    value: float
    error: float
    lower: float
    upper: float
    fraction: float = CRITICAL_FRACTION
    mc_error: float = 0.0  # the levels' standard errors at the crossing over J*'s slope there (in sigma)

    def __str__(self) -> str:
        if not math.isfinite(self.value):
            return "none on this grid (J* stays below the fraction)"
        mc = f" ± {self.mc_error:.2g} (Monte-Carlo)" if self.mc_error > 0 else ""
        return f"{self.value:.4g} ± {self.error:.2g} (interpolation){mc}"


def critical_sigma(sigma, loss, data_variance: float, fraction: float = CRITICAL_FRACTION,
                   stderr=None) -> CriticalSigma:
    """sigma* of levels `loss` at `sigma` (see the top); nan (and the grid's ends) when J*/V never crosses
    `fraction` on the grid; the lowest level when it is already above it there (error: down to 0).  With
    the levels' `stderr`, `mc_error`: the standard error at the crossing (its ratio to J interpolated in
    log sigma) divided by the interpolant's slope dJ/dsigma there."""
    sigma, loss = np.asarray(sigma, dtype=float), np.asarray(loss, dtype=float)
    order = np.argsort(sigma)
    sigma, loss = sigma[order], loss[order]
    stderr = np.zeros(len(sigma)) if stderr is None else np.asarray(stderr, dtype=float)[order]
    target = fraction * data_variance
    above = np.flatnonzero(loss > target)
    nan = CriticalSigma(math.nan, math.nan, float(sigma[0]), float(sigma[-1]), fraction)
    if not len(above):
        return nan
    i = int(above[0])
    if i == 0:
        return CriticalSigma(float(sigma[0]), float(sigma[0]), 0.0, float(sigma[0]), fraction)
    grid, v = np.log(sigma), float(data_variance)
    logit = bool(np.all(loss < v))
    tail = tail_scale(grid, loss, v)

    def root(linear: bool) -> float:
        def f(ls):
            j = interpolate_loss(grid, loss, v, np.array([ls]), logit, linear=linear, tail=tail)[0]
            return j - target
        if f(grid[i - 1]) >= 0:  # the lower level reads the fraction itself (to round-off)
            return math.exp(grid[i - 1])
        if f(grid[i]) <= 0:  # the upper level is above it only by round-off
            return math.exp(grid[i])
        return math.exp(brentq(f, grid[i - 1], grid[i], xtol=1e-12))

    value = root(False)
    lo, hi = float(sigma[i - 1]), float(sigma[i])
    error = min(LINEAR_SAFETY * abs(value - root(True)), max(value - lo, hi - value))
    pair = slice(i - 1, i + 1)  # the standard error at the crossing: relative to J, interpolated in log sigma
    se = (target * float(np.interp(math.log(value), grid[pair], stderr[pair] / loss[pair]))
          if np.all(loss[pair] > 0) else float(np.interp(math.log(value), grid[pair], stderr[pair])))
    step = 1e-4 * (grid[i] - grid[i - 1])
    ends = interpolate_loss(grid, loss, v, math.log(value) + np.array([-step, step]), logit, tail=tail)
    slope = (ends[1] - ends[0]) / (2 * step * value)  # dJ/dsigma
    mc = min(se / slope, hi - lo) if slope > 0 else hi - lo
    return CriticalSigma(value, error, lo, hi, fraction, float(mc) if se > 0 else 0.0)


def band_edges(sigma_star: float, factors=BAND_FACTORS) -> np.ndarray:
    """The sigma edges of the diagnosis's bands: sigma* x `factors` (none without a sigma*)."""
    if not (math.isfinite(sigma_star) and sigma_star > 0):
        return np.zeros(0)
    return np.array([sigma_star * f for f in factors], dtype=float)


def band_rows(edges, contributions) -> list[dict]:
    """One dict per band (below edges[0], between edges, above edges[-1]): its sigma range, its contribution
    to the weighted total and its share of the sum (nan when the sum is not positive)."""
    edges, parts = [0.0, *map(float, edges), math.inf], np.asarray(contributions, dtype=float)
    whole = float(parts.sum())
    return [{"sigma_lo": edges[k], "sigma_hi": edges[k + 1], "weighted_gap": float(parts[k]),
             "share": float(parts[k] / whole) if whole > 0 else math.nan} for k in range(len(parts))]


def band_label(row: dict) -> str:
    """"sigma < 0.13", "0.13 <= sigma < 1.3" or "sigma >= 13"."""
    lo, hi = row["sigma_lo"], row["sigma_hi"]
    if lo <= 0:
        return f"σ < {hi:.2g}"
    return f"σ ≥ {lo:.2g}" if math.isinf(hi) else f"{lo:.2g} ≤ σ < {hi:.2g}"


def band_summary(rows: list[dict]) -> str:
    """"62% of the gap at sigma < 0.5, 30% at 0.5 <= sigma < 5, ..." (largest share first); the absolute
    contributions when the total gap is not positive."""
    if not rows:
        return "no critical sigma: the gap is not split into bands"
    if not all(math.isfinite(r["share"]) for r in rows):
        return "weighted gap " + ", ".join(f"{r['weighted_gap']:.3g} at {band_label(r)}" for r in rows)
    ranked = sorted(rows, key=lambda r: -r["share"])
    parts = [f"{r['share']:.0%} at {band_label(r)}" for r in ranked]
    return parts[0].replace(" at ", " of the gap at ", 1) + (", " + ", ".join(parts[1:]) if parts[1:] else "")
