"""J*(sigma) between and beyond grid levels: PCHIP in logit(J/V), slope-2 tails, and the monotone bracket."""

from __future__ import annotations

import math

import numpy as np
from scipy.interpolate import PchipInterpolator

ZERO_FLOOR = 1e-30  # J/V of a level that reads 0, for the logit/log transform
TAIL_FRACTION = 0.1  # levels below this fraction of V are in the small-sigma tail


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
    ok = (u[:-1] > 1e3 * ZERO_FLOOR) & (u[1:] < TAIL_FRACTION) & (u[1:] > u[:-1]) & np.isfinite(a) & (a > 0)
    return a, ok


def interpolate_loss(grid, loss, variance: float, ls, logit: bool = True, linear: bool = False,
                     tail: float = 0.0, model: bool = False) -> np.ndarray:
    """J at log sigma `ls` from levels `loss` at log sigma `grid`: monotone PCHIP (or, with `linear`,
    piecewise linear) in logit(J/V) (or log J) against t = log sigma - tail / (2 sigma^2) inside the grid
    (`tail` from `tail_scale`), `below_grid`'s estimate below it (`model`: the levels are a model's loss)
    and the slope-2 tail above it (see the top)."""
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
    out[below] = below_grid(grid, loss, v, ls[below], model)[0]
    out[above] = v - (v - loss[-1]) * np.exp(-2 * (ls[above] - grid[-1]))
    return out


def below_grid(grid, loss, variance: float, ls, model: bool = False) -> tuple[np.ndarray, np.ndarray,
                                                                              np.ndarray]:
    """(estimate, low, high) of J at log sigma `ls` below the grid's lowest level, from the two lowest
    levels (see the top).  With x = (s/s0)^2, A = J0 x and k the lowest pair's log-slope:
    - J* where k >= 2: the estimate is the midpoint of A and the tail model J0 x exp(-a (1/s^2 - 1/s0^2))
      through both levels, the bracket [J0 exp(-a' (1/s^2 - 1/s0^2)) through both levels, A];
    - J* where k < 2: the estimate is G = J0 x / (k/2 + (1 - k/2) x), the Gaussian-like curve
      rho s^2 / (1 + b s^2) of slope k at s0 (A at k = 2), the bracket [2 A - s^2, U]: r = J/s^2 <= 1
      rises as s falls here, and may fall back (a point set's r ends at 0) as far below r0 as 1 is above;
    - J* where J0 > TAIL_FRACTION V (the grid has not reached the small-sigma regime): the bracket [0, U];
      every J* value is capped at U = s^2 / (1 + (1/J0 - 1/s0^2) s^2), the single-crossing bound;
    - a model's loss (`model`): the estimate the midpoint of A and J0 (s/s0)^max(k, 0), the bracket the
      estimate -+ their distance (the slope may drift below the grid as far again).
    A lowest level of 0 (or below) gives 0 throughout."""
    grid, loss, ls = np.asarray(grid, float), np.asarray(loss, float), np.asarray(ls, float)
    j0, g0 = float(loss[0]), float(grid[0])
    if not j0 > 0:
        zero = np.zeros(ls.shape)
        return zero, zero, zero
    k = math.log(loss[1] / j0) / (grid[1] - g0) if len(grid) > 1 and loss[1] > 0 else -math.inf
    x = np.exp(2 * (ls - g0))
    square = j0 * x  # A: J / s^2 constant
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        if model:
            k = 2.0 if len(grid) == 1 else max(k, 0.0)
            power = j0 * np.exp(k * (ls - g0))
            est, width = (square + power) / 2, np.abs(square - power)  # the slope may drift as far again
            return est, np.maximum(est - width, 0.0), est + width
        s2 = np.exp(2 * ls)
        bound = s2 / (1 + max(1 / j0 - math.exp(-2 * g0), 0.0) * s2)  # U, single crossing
        if k >= 2:
            rise = np.exp(-2 * ls) - math.exp(-2 * g0)  # 1/s^2 - 1/s0^2 >= 0
            per = math.exp(-2 * g0) - math.exp(-2 * grid[1])  # 1/s0^2 - 1/s1^2 > 0
            tail = square * np.exp(-(k - 2) * (grid[1] - g0) / per * rise)  # `tail_scale`'s model, fitted
            est, lo, hi = (square + tail) / 2, j0 * np.exp(-k * (grid[1] - g0) / per * rise), square
        else:
            half = max(k, 0.0) / 2
            est = square / (half + (1 - half) * x)
            lo, hi = np.maximum(2 * square - s2, 0.0), bound  # r = J/s^2 in [r0 - (1 - r0), 1]
        if j0 > TAIL_FRACTION * variance:
            lo, hi = np.zeros(ls.shape), bound
        return np.minimum(est, bound), np.minimum(lo, bound), np.minimum(hi, bound)


def _to_z(loss, variance: float, logit: bool) -> np.ndarray:
    """The transformed levels: logit(J/V) (or log J), a level of 0 floored at ZERO_FLOOR x V."""
    j = np.maximum(np.asarray(loss, float), ZERO_FLOOR * variance)
    return np.log(j / (variance - j)) if logit else np.log(j)


def _from_z(z, variance: float, logit: bool) -> np.ndarray:
    """J from its transform (`_to_z`)."""
    return variance / (1 + np.exp(-z)) if logit else np.exp(z)


def _total_of(grid, loss, variance: float, ls, coef, model: bool = False) -> float:
    """The total of levels `loss` on `grid` (transform and tail scale from those levels) by `coef` at `ls`."""
    logit = bool(np.all(np.asarray(loss) < variance))
    tail = tail_scale(grid, loss, variance)
    return _dot(coef, interpolate_loss(grid, loss, variance, ls, logit, tail=tail, model=model))


def _monotone_bracket(grid, loss, variance: float, ls) -> tuple[np.ndarray, np.ndarray]:
    """Where J* can lie at `ls` given the levels, J* being non-decreasing in sigma: between the two
    neighbouring levels inside the grid, in [0, J(s_min)] below it (not used: `below_grid`) and in
    [J(s_max), V] above it."""
    lo_vals = np.r_[0.0, np.minimum(loss[:-1], loss[1:]), min(loss[-1], variance)]
    hi_vals = np.r_[max(loss[0], 0.0), np.maximum(loss[:-1], loss[1:]), max(loss[-1], variance)]
    k = np.searchsorted(grid, ls, side="left")  # 0 below, len(grid) above, else the interval's upper node
    k = np.where(np.isin(ls, grid), np.clip(k, 1, len(grid) - 1), k) if len(grid) > 1 else k
    return lo_vals[k], hi_vals[k]


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a * b): numpy's BLAS dot spins its threads and took ~40 ms per call on a loaded machine."""
    return float(np.sum(a * b))
