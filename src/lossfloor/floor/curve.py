"""OptimalLossCurve: J*(sigma) on a log-sigma grid, with standard errors, totals and JSON I/O."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from lossfloor.core.errors import InputError
from lossfloor.core.files import atomic_write_json
from lossfloor.core.schema import check_curve_dict, read_json
from lossfloor.floor.critical import CRITICAL_FRACTION, CriticalSigma
from lossfloor.floor.critical import critical_sigma as _critical_sigma
from lossfloor.floor.interpolation import (
    ZERO_FLOOR,
    _dot,
    _from_z,
    _monotone_bracket,
    _to_z,
    _total_of,
    below_grid,
    interpolate_loss,
    tail_scale,
    tail_scale_gradient,
)
from lossfloor.floor.totals import (
    COVERAGE_RTOL,
    UNIFORM_SD_RATIO,
    GridCoverage,
    TotalLoss,
    _below_grid_message,
    _below_grid_supported,
    _coverage_message,
    _supported,
)
from lossfloor.objective.objective import Objective

# Inside the grid J* is interpolated by a monotone cubic (PCHIP) in z = logit(J*/V) against log sigma (V the
# data variance; log J* instead when a value reaches V, as a model's loss may): exact for Gaussian data with
# equal eigenvalues (z = 2 log sigma - log V), and right in a finite dataset's small-sigma tail, where J*
# falls like exp(-d^2 / 8 sigma^2) and z is concave in log sigma (linear z underestimated the digits EDM
# total by 0.9% at 32 levels; PCHIP's error falls like h^3..h^4).  A level that reads exactly 0 (below
# float64 resolution) is floored at ZERO_FLOOR x V for the transform.  Above the grid z continues with
# slope 2: V - J ~ (V - J(s_max)) (s_max/s)^2 (the large-noise expansion J* = V - tr(Cov^2) / (D s^2) + ...).
#
# Below the grid (`below_grid`) J is extrapolated from the two lowest levels (s0, J0), (s1, J1), with local
# log-slope k = log(J1/J0) / log(s1/s0), between the known small-sigma behaviours: r = J / s^2 constant
# (A = J0 (s/s0)^2: a smooth density, where J* ~ s^2, and a model's x0 loss, which is ~ c s^2), and, where
# r falls (k > 2), a finite point set's tail J ~ s^p exp(-a / s^2), fitted through both levels (the tail
# model of `tail_scale`, p = 2, for the estimate, the midpoint of the two; and p = 0, which falls faster
# than any point set's J* (p = 1), for the error bound).  Where r rises (k < 2) the estimate is the
# Gaussian-like curve rho s^2 / (1 + b s^2) of slope k at s0, and J* is bounded above by the single-crossing
# property of the MMSE (d J*/d(1/s^2) <= -J*^2, so 1/J* - 1/s^2 does not increase as s falls):
# J* <= U = s^2 / (1 + (1/J0 - 1/s0^2) s^2), which J* of Gaussian data attains, and below by r falling back
# as far below r0 as 1 (J* <= s^2) is above it.  Where J0 > TAIL_FRACTION V the grid has not reached the
# small-sigma regime and the bracket is [0, U].  A model's loss has no such bound: its estimate is the
# midpoint of A and the power law J0 (s/s0)^k, its bracket the estimate -+ their distance.
# The bracket, integrated under lambda p, is the total's below-the-grid error: it replaces the monotone
# bracket [0, J0], which under a weight ~ 1/s^2 (flow
# matching) for decades below s_min was vacuous.
#
# A total carries three error terms.  Monte-Carlo: the levels' standard errors propagated linearly,
# sqrt(sum_i (dT/dJ_i se_i)^2), with dT/dJ_i from `sensitivity` (the tail scale a depends on the levels
# too), or, where a level's standard error is not small against it (above LINEAR_SE of it, a level of 0
# included), the secant of the total over [J_i - se_i, J_i + se_i] (clipped at 0): a derivative there is
# meaningless (the tail scale's d a / d J ~ 1 / J explodes at numerically-zero levels).  Interpolation:
# the total on the grid minus the total on each half grid (every other level, both ends kept), the larger
# of the two divided by HALF_GRID_SAFETY (the half grid's error is 8-16x the grid's for an h^3..h^4
# method; 4 is the smallest ratio seen on exact curves), capped by the monotone bracket (J* is
# non-decreasing in sigma, so between two levels it lies between their values), plus the monotone bracket
# of the part above the grid.  Below the grid: the bracket above.  The last two are bounds, which enter
# the standard uncertainty as bound / sqrt(3) (`TotalLoss`).
TAIL_DECADES = 6.0
QUADRATURE_NODES = 16001
REDUCTIONS = ("mean", "sum")
MASS_TOLERANCE = 1e-6  # noise mass allowed beyond the extended range, where the integral stops
HALF_GRID_SAFETY = 4.0
MIN_LEVELS_FOR_HALF_GRID = 5  # fewer levels: the monotone bracket alone bounds the interpolation error
DERIVATIVE_STEP = 1e-4  # central-difference step of `sensitivity`, relative to the gaps between levels
MIN_RELATIVE_STEP = 1e-6  # the smallest gap the step is scaled to (equal levels: a kink, no derivative)
LINEAR_SE = 0.1  # a level with a larger relative stderr gets the secant over +-stderr as its sensitivity
MODEL_KIND = "model"  # settings["kind"] of a model's loss curve (`diagnosis.model_curve`): no J* bounds


@dataclass
class OptimalLossCurve:
    """The per-dimension optimal x0 loss J*(sigma) of one dataset in VE coordinates."""

    sigma: np.ndarray
    loss: np.ndarray
    stderr: np.ndarray
    data_variance: float
    n: int
    dim: int
    settings: dict = field(default_factory=dict)
    fingerprint: str = ""

    def __post_init__(self):
        self.sigma = np.asarray(self.sigma, dtype=float)
        self.loss = np.asarray(self.loss, dtype=float)
        self.stderr = np.asarray(self.stderr, dtype=float)
        if not (len(self.sigma) == len(self.loss) == len(self.stderr)) or len(self.sigma) == 0:
            raise ValueError("sigma, loss and stderr must be non-empty and of equal length")
        if np.any(np.diff(self.sigma) <= 0):
            order = np.argsort(self.sigma)
            self.sigma, self.loss, self.stderr = self.sigma[order], self.loss[order], self.stderr[order]

    # -- evaluation ------------------------------------------------------------------------
    def _evaluate(self, ls: np.ndarray, loss: np.ndarray | None = None, logit: bool | None = None,
                  grid: np.ndarray | None = None) -> np.ndarray:
        """J* at log sigma `ls` from values `loss` on log-sigma `grid` (default: this curve's)."""
        grid = np.log(self.sigma) if grid is None else grid
        loss = self.loss if loss is None else loss
        logit = self._logit() if logit is None else logit
        return interpolate_loss(grid, loss, self.data_variance, ls, logit, tail=self._tail(),
                                model=self.is_model)

    @property
    def is_model(self) -> bool:
        """Whether the levels are a model's loss (settings["kind"] == MODEL_KIND), not J*: no J* bounds."""
        return self.settings.get("kind") == MODEL_KIND

    def _tail(self) -> float:
        """The small-sigma tail scale of this curve's levels (`tail_scale`)."""
        return tail_scale(np.log(self.sigma), self.loss, self.data_variance)

    def _logit(self) -> bool:
        """Interpolate logit(J/V) when every level is below V, else log J."""
        return bool(np.all(self.loss < self.data_variance))

    def _scale(self, reduction: str) -> float:
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; choose from {', '.join(REDUCTIONS)}")
        return 1.0 if reduction == "mean" else float(self.dim)

    def __call__(self, sigma, reduction: str = "mean") -> np.ndarray:
        """J*(sigma), interpolated in log sigma and extended beyond the grid (see the top); per dimension
        (reduction="mean") or summed over the D dimensions (reduction="sum")."""
        scalar = np.ndim(sigma) == 0
        out = self._evaluate(np.log(np.atleast_1d(np.asarray(sigma, dtype=float)))) * self._scale(reduction)
        return out[0] if scalar else out

    def _quadrature(self, objective: Objective) -> tuple[np.ndarray, np.ndarray]:
        """Nodes in log sigma and weights p(log sigma) lambda(sigma) d log sigma (or atom masses x lambda)."""
        grid = np.log(self.sigma)
        lo, hi = sigma_grid_coverage(objective, self.sigma)
        if objective.is_discrete:
            ls = np.log(objective.atoms().numpy())
            coef = np.full(len(ls), 1.0 / len(ls))
        else:
            # Trapezoid rule on a fine mesh that contains the grid nodes, where J* has its kinks.
            ls = np.union1d(np.linspace(lo, hi, QUADRATURE_NODES), grid)
            logp = objective.log_density(torch.tensor(ls)).numpy()
            h = np.diff(ls)
            weights = np.concatenate([h, [0.0]]) / 2 + np.concatenate([[0.0], h]) / 2
            coef = np.where(np.isfinite(logp), np.exp(logp), 0.0) * weights
        lam = objective.x0_weight(torch.tensor(np.exp(ls))).numpy()
        return ls, coef * np.where(coef > 0, lam, 0.0)  # lambda may be infinite where p vanishes

    def total(self, objective: Objective, reduction: str = "mean", warn: bool = True) -> TotalLoss:
        """The objective's optimal loss E_{p(sigma)}[lambda(sigma) J*(sigma)], per dimension
        (reduction="mean") or summed over dimensions (reduction="sum"), with its Monte-Carlo standard error,
        its interpolation error bound and their combined standard uncertainty (`TotalLoss`); warns when the
        grid is too coarse for it."""
        scale = self._scale(reduction)
        ls, coef = self._quadrature(objective)
        grid, logit = np.log(self.sigma), self._logit()
        values = self._evaluate(ls, logit=logit)
        value = _dot(coef, values)
        outside = (ls < grid[0]) | (ls > grid[-1])
        mc = float(np.sqrt(np.sum((self.sensitivity(objective, ls, coef) * self.stderr) ** 2)))
        interp = self._interpolation_error(ls, coef, values, logit)
        below = self._below_grid_error(ls, coef)
        extrapolated = _dot(coef[outside], values[outside])
        combined = math.hypot(mc, interp / UNIFORM_SD_RATIO, below / UNIFORM_SD_RATIO)
        total = TotalLoss(value * scale, combined * scale, extrapolated * scale, mc * scale, interp * scale,
                          below * scale)
        if warn:
            for message in self._problems(objective, total, scale):
                warnings.warn(message, stacklevel=2)
        return total

    def _below_grid_error(self, ls, coef) -> float:
        """The bracket of `below_grid` integrated: sum over nodes below the grid of coef x the larger
        distance from the estimate to an end of the bracket."""
        grid = np.log(self.sigma)
        below = ls < grid[0]
        if not below.any():
            return 0.0
        est, lo, hi = below_grid(grid, self.loss, self.data_variance, ls[below], self.is_model)
        return _dot(coef[below], np.maximum(est - lo, hi - est))

    def below_grid_remedy(self, objective: Objective, target: float) -> float:
        """A lower sigma_min after which the part of the total below the grid would be known to `target`
        (per dimension), judged by the current bracket: the largest sigma below which the bracket, integrated,
        is at most `target`, rounded down to 1, 2 or 5 times a power of 10."""
        ls, coef = self._quadrature(objective)
        grid = np.log(self.sigma)
        below = ls < grid[0]
        est, lo, hi = below_grid(grid, self.loss, self.data_variance, ls[below], self.is_model)
        cum = np.cumsum(coef[below] * np.maximum(est - lo, hi - est))
        ok = np.flatnonzero(cum <= target)
        s = math.exp(ls[below][ok[-1]] if len(ok) else ls[below][0])
        power = 10.0 ** math.floor(math.log10(s))
        return max(m for m in (1.0, 2.0, 5.0) if m * power <= s * (1 + 1e-12)) * power

    def _problems(self, objective: Objective, total: TotalLoss, scale: float = 1.0,
                  rtol: float = COVERAGE_RTOL) -> list[str]:
        """The warnings a total (of reduction `scale`) deserves: a grid too coarse for it, or too much of its
        uncertainty from below the grid (then with a sigma_min that would do)."""
        out = [] if _supported(total, rtol) else [_coverage_message(objective.name, total, len(self.sigma))]
        if not _below_grid_supported(total, rtol):
            target = 0.5 * max(rtol * abs(total.value), total.mc_stderr) / scale
            remedy = self.below_grid_remedy(objective, target)
            out.append(_below_grid_message(objective.name, total, float(self.sigma[0]), remedy))
        return out

    def sensitivity(self, objective: Objective, ls=None, coef=None) -> np.ndarray:
        """d total / d J_i for every level (per dimension), the tail scale's dependence on the levels
        included (see `_level_derivatives`), where the level's standard error is at most LINEAR_SE of it;
        elsewhere the secant of the total over the level's range [max(J_i - se_i, 0), J_i + se_i] (the upper
        end at most 0.5 V above J_i), each total recomputed from scratch: a linear propagation is meaningless
        where the total is not linear over +-1 SE (the tail scale's d a / d J ~ 1 / J explodes at
        numerically-zero levels), and at a level of 0 (at most ZERO_FLOOR x V) the total has no derivative
        (0 there without a stderr)."""
        if ls is None:
            ls, coef = self._quadrature(objective)
        grid, v, n = np.log(self.sigma), self.data_variance, len(self.sigma)
        zero = self.loss <= ZERO_FLOOR * v
        wide = (self.stderr > 0) & (zero | (self.stderr > LINEAR_SE * self.loss))
        out = self._level_derivatives(ls, coef, skip=wide)
        for i in np.flatnonzero(wide):
            lo = 0.0 if zero[i] else max(self.loss[i] - self.stderr[i], 0.0)
            hi = max(self.loss[i], 0.0) + min(self.stderr[i], 0.5 * v)
            t = [_total_of(grid, np.where(np.arange(n) == i, x, self.loss), v, ls, coef, self.is_model)
                 for x in (lo, hi)]
            out[i] = (t[1] - t[0]) / (hi - lo)
        return out

    def _level_derivatives(self, ls, coef, skip=None) -> np.ndarray:
        """d total / d J_i at fixed tail scale plus d total / d a x d a / d J_i (a = `tail_scale`), each
        partial by a central difference in the transformed level z (or in log a) of DERIVATIVE_STEP times the
        gap to the nearer neighbouring z (at most 1): PCHIP's slopes bend on the scale of those gaps (and
        have kinks where they close), so the relative truncation error is ~ DERIVATIVE_STEP^2.  0 at levels
        of 0 and where `skip`."""
        logit, v, grid, n = self._logit(), self.data_variance, np.log(self.sigma), len(self.sigma)
        tail, z = self._tail(), _to_z(self.loss, v, logit)
        gaps = np.abs(np.diff(z))
        gap = np.minimum(np.r_[np.inf, gaps], np.r_[gaps, np.inf])
        steps = DERIVATIVE_STEP * np.clip(gap, MIN_RELATIVE_STEP, 1.0)
        out, model = np.zeros(n), self.is_model
        todo = self.loss > ZERO_FLOOR * v
        for i in np.flatnonzero(todo if skip is None else todo & ~skip):
            # PCHIP's slopes at i-1, i, i+1 (and an end slope two nodes away) depend on level i: it moves the
            # curve only within two intervals of it, the part below the grid (the two lowest levels) and the
            # part above it (the highest).
            lo = grid[i - 2] if i >= 2 else -np.inf
            hi = grid[i + 2] if i + 2 < n else (np.inf if i == n - 1 else grid[-1])
            near = (ls >= lo) & (ls <= hi)
            x = _from_z(z[i] + np.array([steps[i], -steps[i]]), v, logit)
            t = [_dot(coef[near], interpolate_loss(grid, np.where(np.arange(n) == i, xk, self.loss), v,
                                                   ls[near], logit, tail=tail, model=model)) for xk in x]
            out[i] = (t[0] - t[1]) / (x[0] - x[1])
        grad = tail_scale_gradient(grid, self.loss, v)
        if tail > 0 and np.any(grad):
            keep = (ls >= grid[0]) & (ls <= grid[-1])  # beyond the grid the curve does not depend on a
            t = [_dot(coef[keep], interpolate_loss(grid, self.loss, v, ls[keep], logit, tail=tail * f))
                 for f in (math.exp(DERIVATIVE_STEP), math.exp(-DERIVATIVE_STEP))]
            out += (t[0] - t[1]) / (2 * math.sinh(DERIVATIVE_STEP) * tail) * grad
        return out

    def _interpolation_error(self, ls, coef, values, logit) -> float:
        """Half-grid estimate inside the grid (capped by the monotone bracket) plus the bracket above it (the
        part below the grid is `_below_grid_error`'s)."""
        grid, v = np.log(self.sigma), self.data_variance
        lo, hi = _monotone_bracket(grid, self.loss, v, ls)
        bound = coef * np.maximum(values - lo, hi - values)
        outside = (ls < grid[0]) | (ls > grid[-1])
        inside = float(np.sum(bound[~outside]))
        if len(grid) >= MIN_LEVELS_FOR_HALF_GRID:
            value = _dot(coef[~outside], values[~outside])
            diffs = []
            for offset in (0, 1):
                keep = np.unique(np.r_[0, np.arange(offset, len(grid), 2), len(grid) - 1])
                half = self._evaluate(ls[~outside], self.loss[keep], logit, grid[keep])
                diffs.append(abs(value - _dot(coef[~outside], half)))
            inside = min(inside, max(diffs) / HALF_GRID_SAFETY)
        return inside + float(np.sum(bound[ls > grid[-1]]))

    def coverage(self, objective: Objective, rtol: float = COVERAGE_RTOL,
                 reduction: str = "mean") -> GridCoverage:
        """Whether this grid supports the objective's total: its interpolation error and its error from below
        the grid are each at most `rtol` of the total or at most its Monte-Carlo standard error."""
        total = self.total(objective, reduction, warn=False)
        rel = total.interpolation_error / abs(total.value) if total.value else math.inf
        problems = self._problems(objective, total, self._scale(reduction), rtol)
        msg = "; ".join(problems) or (f"{objective.name}: the grid supports the total (estimated "
                                      f"interpolation error {rel:.2%}, below the grid "
                                      f"{total.below_grid_error:.2g})")
        return GridCoverage(objective.name, total, rel, not problems, msg)

    def refinement_scores(self, objective: Objective) -> np.ndarray:
        """Per grid interval, the integral of lambda p |PCHIP - linear| (both in the transformed J*): where
        the objective's integrand changes fastest and a new level helps most."""
        ls, coef = self._quadrature(objective)
        grid, logit = np.log(self.sigma), self._logit()
        inside = (ls >= grid[0]) & (ls <= grid[-1])
        ls, coef = ls[inside], coef[inside]
        linear = interpolate_loss(grid, self.loss, self.data_variance, ls, logit, linear=True,
                                  tail=self._tail())
        diff = np.abs(self._evaluate(ls, logit=logit) - linear)
        which = np.clip(np.searchsorted(grid, ls, side="right") - 1, 0, len(grid) - 2)
        return np.bincount(which, weights=coef * diff, minlength=max(len(grid) - 1, 0))

    def critical_sigma(self, fraction: float = CRITICAL_FRACTION) -> float:
        """sigma*, where the interpolated J* crosses `fraction` of the data variance (nan if it does not on
        the grid; `floor.critical`)."""
        return self.critical(fraction).value

    def critical(self, fraction: float = CRITICAL_FRACTION) -> CriticalSigma:
        """sigma* with its interpolation uncertainty (`floor.critical.critical_sigma`)."""
        return _critical_sigma(self.sigma, self.loss, self.data_variance, fraction, self.stderr)

    def split_total(self, objective: Objective, edges) -> np.ndarray:
        """`total(objective).value`'s quadrature summed per sigma band between the increasing `edges`
        (len(edges) + 1 parts, the first below edges[0], the last above edges[-1]; per dimension)."""
        ls, coef = self._quadrature(objective)
        which = np.searchsorted(np.log(np.asarray(edges, dtype=float)), ls, side="right")
        return np.bincount(which, weights=coef * self._evaluate(ls), minlength=len(edges) + 1)

    # -- I/O ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("sigma", "loss", "stderr"):
            d[k] = [float(v) for v in d[k]]
        critical = self.critical()
        d["critical_sigma"], d["critical_sigma_error"] = critical.value, critical.error
        d["critical_sigma_mc_error"] = critical.mc_error
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "curve") -> OptimalLossCurve:
        """The curve of a `to_dict` dict; InputError naming `where` and the field if it does not fit."""

        check_curve_dict(d, where)
        keys = ("sigma", "loss", "stderr", "data_variance", "n", "dim", "settings", "fingerprint")
        return cls(**{k: d[k] for k in keys if d.get(k) is not None})

    def save(self, path, **extra) -> None:
        """Write strict JSON atomically (temporary file, then rename; NaN as null); `extra` keys are added."""
        atomic_write_json(path, {**self.to_dict(), **extra})

    @classmethod
    def load(cls, path) -> OptimalLossCurve:
        """A curve JSON file, checked field by field (one-line InputError naming the file and field)."""

        return cls.from_dict(read_json(path, "curve JSON file"), where=str(path))


def sigma_grid_coverage(objective: Objective, sigmas) -> tuple[float, float]:
    """The log-sigma range a curve on `sigmas` integrates over (the grid plus its tails); ValueError
    unless the objective's noise levels lie inside it (up to MASS_TOLERANCE of a density)."""
    grid = np.log(np.asarray(sigmas, dtype=float))
    lo, hi = grid.min() - TAIL_DECADES * math.log(10), grid.max() + TAIL_DECADES * math.log(10)
    support = f"sigma in [{math.exp(lo):.3g}, {math.exp(hi):.3g}] ({TAIL_DECADES:g} decades beyond the grid)"
    if objective.is_discrete:
        ls = np.log(objective.atoms().numpy())
        if ls.min() < lo or ls.max() > hi:
            raise InputError(f"{objective.name}: noise levels outside {support}; widen the sigma grid")
        return lo, hi
    mass = objective.cdf(torch.tensor(lo)).item() + 1 - objective.cdf(torch.tensor(hi)).item()
    if mass > MASS_TOLERANCE:
        raise InputError(f"{objective.name}: {mass:.2g} of the noise density lies outside {support}; "
                         "widen the sigma grid")
    return lo, hi
