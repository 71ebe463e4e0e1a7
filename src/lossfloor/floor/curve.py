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
from lossfloor.core.stats import Estimate
from lossfloor.floor.interpolation import (
    ZERO_FLOOR,
    _dot,
    _from_z,
    _monotone_bracket,
    _to_z,
    _total_of,
    interpolate_loss,
    tail_scale,
    tail_scale_gradient,
)
from lossfloor.objective.objective import Objective

# Inside the grid J* is interpolated by a monotone cubic (PCHIP) in z = logit(J*/V) against log sigma (V the
# data variance; log J* instead when a value reaches V, as a model's loss may): exact for Gaussian data with
# equal eigenvalues (z = 2 log sigma - log V), and right in a finite dataset's small-sigma tail, where J*
# falls like exp(-d^2 / 8 sigma^2) and z is concave in log sigma (linear z underestimated the digits EDM
# total by 0.9% at 32 levels; PCHIP's error falls like h^3..h^4).  A level that reads exactly 0 (below
# float64 resolution) is floored at ZERO_FLOOR x V for the transform.  Beyond the grid z continues with
# slope 2: J ~ J(s_min) (s/s_min)^2 below and V - J ~ (V - J(s_max)) (s_max/s)^2 above (the large-noise
# expansion J* = V - tr(Cov^2) / (D s^2) + ...).
#
# A total carries two error terms.  Monte-Carlo: the levels' standard errors propagated linearly,
# sqrt(sum_i (dT/dJ_i se_i)^2), with dT/dJ_i from `sensitivity` (the tail scale a depends on the levels
# too; at a level of 0, where T has no derivative, the secant over its standard error).  Interpolation:
# the total on the grid minus the total on each half grid (every other level, both ends kept), the larger
# of the two divided by HALF_GRID_SAFETY (the half grid's error is 8-16x the grid's for an h^3..h^4
# method; 4 is the smallest ratio seen on exact curves), capped by the monotone bracket (J* is
# non-decreasing in sigma, so between two levels it lies between their values), plus the bracket bound of
# the part beyond the grid: a bound, which enters the standard uncertainty as bound / sqrt(3) (`TotalLoss`).
TAIL_DECADES = 6.0
QUADRATURE_NODES = 16001
REDUCTIONS = ("mean", "sum")
MASS_TOLERANCE = 1e-6  # noise mass allowed beyond the extended range, where the integral stops
HALF_GRID_SAFETY = 4.0
MIN_LEVELS_FOR_HALF_GRID = 5  # fewer levels: the monotone bracket alone bounds the interpolation error
DERIVATIVE_STEP = 1e-4  # central-difference step of `sensitivity`, relative to the gaps between levels
MIN_RELATIVE_STEP = 1e-6  # the smallest gap the step is scaled to (equal levels: a kink, no derivative)
UNIFORM_SD_RATIO = math.sqrt(3.0)  # half-width / standard deviation of a uniform distribution
COVERAGE_RTOL = 0.01  # a grid supports a total if its interpolation error is below this fraction (or MC)


@dataclass(frozen=True)
class TotalLoss(Estimate):
    """An objective's total optimal loss E_p[lambda J*] (per dimension): an `Estimate` (value, stderr).

    stderr: the combined standard uncertainty, sqrt(mc_stderr^2 + interpolation_stderr^2).
    extrapolated: the part of the value that comes from beyond the sigma grid.
    mc_stderr: the levels' Monte-Carlo standard errors propagated (linearly) to the total.
    interpolation_error: a bound on |error| from interpolating between (and beyond) the grid's levels (the
        monotone bracket, a worst case, or the half-grid difference / HALF_GRID_SAFETY, a conservative
        estimate), not a standard error.  Nothing more being known of the error than that it lies within
        +-bound, it enters `stderr` as a uniform distribution on [-bound, bound] (GUM's type B rule): a
        standard uncertainty of bound / sqrt(3), `interpolation_stderr`, added in quadrature to the
        Monte-Carlo error, which is independent of it.  value +- sqrt(3) stderr thus always contains
        value +- interpolation_error.
    """

    extrapolated: float = 0.0
    mc_stderr: float = 0.0
    interpolation_error: float = 0.0

    @property
    def interpolation_stderr(self) -> float:
        """The interpolation bound as a standard uncertainty: bound / sqrt(3) (uniform on +-bound)."""
        return self.interpolation_error / UNIFORM_SD_RATIO


@dataclass(frozen=True)
class GridCoverage:
    """Whether a curve's sigma grid supports an objective's total, and with what estimated error."""

    objective: str
    total: TotalLoss
    relative_error: float  # interpolation_error / |total|
    supported: bool  # interpolation error <= max(rtol |total|, Monte-Carlo stderr)
    message: str


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
        return interpolate_loss(grid, loss, self.data_variance, ls, logit, tail=self._tail())

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
        extrapolated = _dot(coef[outside], values[outside])
        combined = math.hypot(mc, interp / UNIFORM_SD_RATIO)
        total = TotalLoss(value * scale, combined * scale, extrapolated * scale, mc * scale, interp * scale)
        if warn and not _supported(total):
            warnings.warn(_coverage_message(objective.name, total, len(self.sigma)), stacklevel=2)
        return total

    def sensitivity(self, objective: Objective, ls=None, coef=None) -> np.ndarray:
        """d total / d J_i for every level (per dimension), the tail scale's dependence on the levels
        included (see `_level_derivatives`); at a level of 0 (at most ZERO_FLOOR x V), where the total has no
        derivative, the secant over [0, stderr] (0 without a stderr)."""
        if ls is None:
            ls, coef = self._quadrature(objective)
        grid, v = np.log(self.sigma), self.data_variance
        out = self._level_derivatives(ls, coef)
        zero = np.flatnonzero((self.loss <= ZERO_FLOOR * v) & (self.stderr > 0))
        if len(zero):
            base = _total_of(grid, self.loss, v, ls, coef)
            for i in zero:
                up = min(self.stderr[i], 0.5 * v)
                out[i] = (_total_of(grid, np.where(np.arange(len(grid)) == i, up, self.loss), v, ls, coef)
                          - base) / up
        return out

    def _level_derivatives(self, ls, coef) -> np.ndarray:
        """d total / d J_i at fixed tail scale plus d total / d a x d a / d J_i (a = `tail_scale`), each
        partial by a central difference in the transformed level z (or in log a) of DERIVATIVE_STEP times the
        gap to the nearer neighbouring z (at most 1): PCHIP's slopes bend on the scale of those gaps (and
        have kinks where they close), so the relative truncation error is ~ DERIVATIVE_STEP^2.  0 at levels
        of 0."""
        logit, v, grid, n = self._logit(), self.data_variance, np.log(self.sigma), len(self.sigma)
        tail, z = self._tail(), _to_z(self.loss, v, logit)
        gaps = np.abs(np.diff(z))
        gap = np.minimum(np.r_[np.inf, gaps], np.r_[gaps, np.inf])
        steps = DERIVATIVE_STEP * np.clip(gap, MIN_RELATIVE_STEP, 1.0)
        out = np.zeros(n)
        for i in np.flatnonzero(self.loss > ZERO_FLOOR * v):
            # PCHIP's slopes at i-1, i, i+1 (and an end slope two nodes away) depend on level i: it moves the
            # curve only within two intervals of it, and the tail beyond the grid at either end.
            lo = grid[i - 2] if i >= 2 else (-np.inf if i == 0 else grid[0])
            hi = grid[i + 2] if i + 2 < n else (np.inf if i == n - 1 else grid[-1])
            near = (ls >= lo) & (ls <= hi)
            x = _from_z(z[i] + np.array([steps[i], -steps[i]]), v, logit)
            t = [_dot(coef[near], interpolate_loss(grid, np.where(np.arange(n) == i, xk, self.loss), v,
                                                   ls[near], logit, tail=tail)) for xk in x]
            out[i] = (t[0] - t[1]) / (x[0] - x[1])
        grad = tail_scale_gradient(grid, self.loss, v)
        if tail > 0 and np.any(grad):
            keep = ls <= grid[-1]  # beyond the largest level the curve does not depend on a
            t = [_dot(coef[keep], interpolate_loss(grid, self.loss, v, ls[keep], logit, tail=tail * f))
                 for f in (math.exp(DERIVATIVE_STEP), math.exp(-DERIVATIVE_STEP))]
            out += (t[0] - t[1]) / (2 * math.sinh(DERIVATIVE_STEP) * tail) * grad
        return out

    def _interpolation_error(self, ls, coef, values, logit) -> float:
        """Half-grid estimate inside the grid (capped by the monotone bracket) plus the bracket beyond it."""
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
        return inside + float(np.sum(bound[outside]))

    def coverage(self, objective: Objective, rtol: float = COVERAGE_RTOL,
                 reduction: str = "mean") -> GridCoverage:
        """Whether this grid supports the objective's total: its interpolation error is at most `rtol` of
        the total or at most its Monte-Carlo standard error."""
        total = self.total(objective, reduction, warn=False)
        rel = total.interpolation_error / abs(total.value) if total.value else math.inf
        ok = _supported(total, rtol)
        msg = (f"{objective.name}: the grid supports the total (estimated interpolation error {rel:.2%})"
               if ok else _coverage_message(objective.name, total, len(self.sigma)))
        return GridCoverage(objective.name, total, rel, ok, msg)

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

    def critical_sigma(self, fraction: float = 0.01) -> float:
        """The smallest grid sigma where J* exceeds `fraction` of the data variance (nan if none)."""
        above = np.nonzero(self.loss > fraction * self.data_variance)[0]
        return float(self.sigma[above[0]]) if len(above) else math.nan

    # -- I/O ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("sigma", "loss", "stderr"):
            d[k] = [float(v) for v in d[k]]
        d["critical_sigma"] = self.critical_sigma()
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


def _supported(total: TotalLoss, rtol: float = COVERAGE_RTOL) -> bool:
    return total.interpolation_error <= max(rtol * abs(total.value), total.mc_stderr)


def _coverage_message(name: str, total: TotalLoss, levels: int) -> str:
    rel = total.interpolation_error / abs(total.value) if total.value else math.inf
    return (f"{name}: the sigma grid ({levels} levels) is too coarse for this total: estimated "
            f"interpolation error {total.interpolation_error:.3g} ({rel:.1%} of {total.value:.4g}, "
            f"Monte-Carlo stderr {total.mc_stderr:.2g}); add levels where lambda p J* changes fastest "
            "(OptimalLossCurve.refinement_scores) or use estimate --total-stderr")
