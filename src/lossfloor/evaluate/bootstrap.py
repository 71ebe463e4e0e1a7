"""Grouped bootstrap for the scaling fits: weights that resample whole runs and expanded percentile
intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A confidence interval [low, high]."""

    low: float
    high: float

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_list(self) -> list[float]:
        return [self.low, self.high]


# --------------------------------------------------------------------------------------------
# The public fit.
# --------------------------------------------------------------------------------------------


def group_index(groups, n: int) -> list[np.ndarray]:
    if groups is None:
        return [np.array([i]) for i in range(n)]
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group labels for {n} points")
    _, inverse = np.unique(groups, return_inverse=True)
    return [np.nonzero(inverse == g)[0] for g in range(inverse.max() + 1)]


def bootstrap_weights(groups, n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) counts: how often each point is drawn when whole groups are resampled with
    replacement (as many draws as groups)."""
    members = group_index(groups, n)
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(members), size=(n_boot, len(members)))
    counts = np.stack([np.bincount(row, minlength=len(members)) for row in picks]) if n_boot else \
        np.zeros((0, len(members)), dtype=int)
    w = np.zeros((n_boot, n))
    for g, idx in enumerate(members):
        w[:, idx] = counts[:, g:g + 1]
    return w


def expanded_quantiles(groups: int, level: float = LEVEL, strata: int = 1) -> tuple[float, float]:
    """Quantile levels of the expanded percentile interval (Hesterberg 2015): the percentile interval
    covers below nominal with few independent units; widening it to Phi(sqrt(g/(g-1)) t_{g-1}) restores
    the normal-theory coverage of a mean of g units.  With `strata` (units resampled within equal strata of
    n_h = g / strata) the factor is sqrt(n_h / (n_h - 1)) on t with g - strata degrees of freedom."""
    n_h, df = groups / strata, groups - strata
    if groups < 3 or n_h < 2 or df < 2:
        return (1 - level) / 2, (1 + level) / 2
    z = math.sqrt(n_h / (n_h - 1)) * stats.t.ppf((1 + level) / 2, df)
    q = float(stats.norm.cdf(z))
    return 1 - q, q


def percentile_interval(samples: np.ndarray, groups: int, level: float = LEVEL) -> Interval:
    ok = samples[np.isfinite(samples)]
    if len(ok) == 0:
        return Interval(math.nan, math.nan)
    lo, hi = np.quantile(ok, expanded_quantiles(groups, level))
    return Interval(float(lo), float(hi))
