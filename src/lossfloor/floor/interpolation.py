"""J*(sigma) between and beyond grid levels: PCHIP in logit(J/V), slope-2 tails, and the monotone bracket."""

from __future__ import annotations

import math

import numpy as np
from scipy.interpolate import PchipInterpolator

ZERO_FLOOR = 1e-30  # J/V of a level that reads 0, for the logit/log transform


def tail_scale(grid, loss, variance: float) -> float:
    """a in J* ~ exp(-a / sigma^2), a finite dataset's small-sigma tail (a = d^2 / 8 for two points d
    apart): the median over neighbouring levels below V/10 of sigma^2 (dz/dlog sigma - 2) / 2, which is 0
    for a smooth density (z ~ 2 log sigma); 0 when no level is in the tail."""
    a, ok = _tail_terms(grid, loss, variance)
    return float(np.median(a[ok])) if ok.any() else 0.0


def tail_scale_gradient(grid, loss, variance: float) -> np.ndarray:
    """d tail_scale / d loss_i: the derivative of the median's pair (or the mean of its two middle pairs);
    0 when no level is in the tail."""
    grid, loss = np.asarray(grid, float), np.asarray(loss, float)
    a, ok = _tail_terms(grid, loss, variance)
    out = np.zeros(len(grid))
    pairs = np.flatnonzero(ok)
    if not len(pairs):
        return out
    order = pairs[np.argsort(a[pairs], kind="stable")]
    m = len(order)
    middle = order[[m // 2]] if m % 2 else order[[m // 2 - 1, m // 2]]
    u = loss / variance
    with np.errstate(divide="ignore", invalid="ignore"):
        dz = 1 / (variance * u * (1 - u))  # d logit(J/V) / dJ
    for k in middle:  # a_k = e^{g_k + g_k+1} ((z_k+1 - z_k) / (g_k+1 - g_k) - 2) / 2
        c = math.exp(grid[k] + grid[k + 1]) / (2 * (grid[k + 1] - grid[k]) * len(middle))
        out[k] -= c * dz[k]
        out[k + 1] += c * dz[k + 1]
    return out


def _tail_terms(grid, loss, variance: float) -> tuple[np.ndarray, np.ndarray]:
    """Per neighbouring pair of levels, its tail-scale estimate and whether it is in the tail."""
    grid, u = np.asarray(grid, float), np.asarray(loss, float) / variance
    if len(grid) < 2:
        return np.zeros(0), np.zeros(0, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.log(u / (1 - u))
        a = np.exp(grid[:-1] + grid[1:]) * (np.diff(z) / np.diff(grid) - 2) / 2
    ok = (u[:-1] > 1e3 * ZERO_FLOOR) & (u[1:] < 0.1) & (u[1:] > u[:-1]) & np.isfinite(a) & (a > 0)
    return a, ok


def interpolate_loss(grid, loss, variance: float, ls, logit: bool = True, linear: bool = False,
                     tail: float = 0.0) -> np.ndarray:
    """J at log sigma `ls` from levels `loss` at log sigma `grid`: monotone PCHIP (or, with `linear`,
    piecewise linear) in logit(J/V) (or log J) against t = log sigma - tail / (2 sigma^2) inside the grid
    (`tail` from `tail_scale`), the slope-2 tails outside (see the top)."""
    grid, loss, ls = np.asarray(grid, float), np.asarray(loss, float), np.asarray(ls, float)
    v, floor = variance, ZERO_FLOOR * variance
    z = _to_z(loss, v, logit)
    t_grid, t = grid - 0.5 * tail * np.exp(-2 * grid), ls - 0.5 * tail * np.exp(-2 * ls)
    out = np.empty(ls.shape)
    below, above = ls < grid[0], ls > grid[-1]
    mid = ~(below | above)
    if len(grid) == 1:
        zm = np.full(int(mid.sum()), z[0])
    elif linear or len(grid) == 2:
        zm = np.interp(t[mid], t_grid, z)
    else:
        zm = PchipInterpolator(t_grid, z, extrapolate=False)(t[mid])
    jm = _from_z(zm, v, logit)
    out[mid] = np.where(jm <= floor * (1 + 1e-9), 0.0, jm)  # a level of 0 stays 0
    out[below] = loss[0] * np.exp(2 * (t[below] - t_grid[0]))
    out[above] = v - (v - loss[-1]) * np.exp(-2 * (ls[above] - grid[-1]))
    return out


def _to_z(loss, variance: float, logit: bool) -> np.ndarray:
    """The transformed levels: logit(J/V) (or log J), a level of 0 floored at ZERO_FLOOR x V."""
    j = np.maximum(np.asarray(loss, float), ZERO_FLOOR * variance)
    return np.log(j / (variance - j)) if logit else np.log(j)


def _from_z(z, variance: float, logit: bool) -> np.ndarray:
    """J from its transform (`_to_z`)."""
    return variance / (1 + np.exp(-z)) if logit else np.exp(z)


def _total_of(grid, loss, variance: float, ls, coef) -> float:
    """The total of levels `loss` on `grid` (transform and tail scale from those levels) by `coef` at `ls`."""
    logit = bool(np.all(np.asarray(loss) < variance))
    tail = tail_scale(grid, loss, variance)
    return _dot(coef, interpolate_loss(grid, loss, variance, ls, logit, tail=tail))


def _monotone_bracket(grid, loss, variance: float, ls) -> tuple[np.ndarray, np.ndarray]:
    """Where J* can lie at `ls` given the levels, J* being non-decreasing in sigma: between the two
    neighbouring levels inside the grid, in [0, J(s_min)] below it and in [J(s_max), V] above it."""
    lo_vals = np.r_[0.0, np.minimum(loss[:-1], loss[1:]), min(loss[-1], variance)]
    hi_vals = np.r_[max(loss[0], 0.0), np.maximum(loss[:-1], loss[1:]), max(loss[-1], variance)]
    k = np.searchsorted(grid, ls, side="left")  # 0 below, len(grid) above, else the interval's upper node
    k = np.where(np.isin(ls, grid), np.clip(k, 1, len(grid) - 1), k) if len(grid) > 1 else k
    return lo_vals[k], hi_vals[k]


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a * b): numpy's BLAS dot spins its threads and took ~40 ms per call on a loaded machine."""
    return float(np.sum(a * b))
