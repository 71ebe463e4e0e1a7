"""Scaling laws of the training loss in compute, with and without the optimal loss subtracted.

Three forms, fitted to (compute F, loss J) points:

- ``plain``      J = beta F^alpha             ordinary least squares of log J on log F;
- ``corrected``  J - J* = beta F^alpha        the same on log(J - J*), with J* *given* (from lossfloor,
                                              under the same weight and noise density as J);
- ``free``       J = E + beta F^alpha         E fitted: Huber loss on log residuals, several starting
                                              points, BFGS (Hoffmann et al. 2022, approach 3).

Every fit reports

- ``rho``: the statistic of Xu, Luo et al.: the Pearson correlation coefficient of the log-log line,
  corr(log F, log(J - floor)) with floor = 0, J* or E, reported as its magnitude |r| (the paper quotes
  0.82 -> 0.94 for decreasing losses).  Points at or below the floor have no logarithm: they are listed in
  ``below_floor`` and left out of rho and of the log-log regression, never dropped silently.
- ``r2``: 1 - SS_res / SS_tot of log J against the fitted log J(F), over every point.  Unlike rho it is
  on one scale (log J) for all three forms, so it compares them; for ``plain`` it equals rho^2.
- bootstrap 95% intervals of alpha, beta, the floor, rho and R^2, resampling whole groups (``groups``:
  one label per point, e.g. the training run; points of one run are correlated).  The intervals are
  expanded percentile intervals (`expanded_quantiles`): with 20 runs of 2 points and run effects plain
  percentiles covered the true exponent in 92.7% of 400 synthetic studies, the expanded ones in 94.8%
  (results/benchmarks/scaling_coverage.md; tests/evaluate/test_scaling.py checks the rate).  Fits that
  share ``seed`` and ``groups`` share their resamples, so `paired_difference` gives paired intervals.
  A J* standard error (``floor_stderr``) is propagated by redrawing J* ~ N(J*, se^2) per resample.
- ``extrapolation_error``: fit on the lower-compute two thirds of the points (by compute, not by input
  order), predict the top third, mean |log J_predicted - log J|.

Exponents are negative for a decreasing loss.  Compute is centred in log space inside the fits, so its
units (FLOPs, PF-days) do not matter numerically; beta is reported in the units given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from lossfloor.core.errors import InputError
from lossfloor.evaluate.bootstrap import LEVEL, Interval, bootstrap_weights, group_index, percentile_interval

FORMS = ("plain", "corrected", "free")
HUBER_DELTA = 1e-3  # Hoffmann et al.'s delta, on natural-log residuals


@dataclass(frozen=True)
class Bootstrap:
    """Per-resample parameter values (nan where a resample could not be fitted)."""

    alpha: np.ndarray
    beta: np.ndarray
    floor: np.ndarray
    rho: np.ndarray
    r2: np.ndarray

    @property
    def failed(self) -> int:
        """Resamples that could not be fitted (e.g. a single distinct compute value)."""
        return int(np.sum(~np.isfinite(self.alpha)))


@dataclass(frozen=True)
class PowerLawFit:
    """One fitted form: J = floor + beta F^alpha, its fit statistics and bootstrap intervals."""

    form: str
    alpha: float
    beta: float
    floor: float  # 0 (plain), the given J* (corrected) or the fitted E (free)
    rho: float
    r2: float
    n: int  # points given
    below_floor: tuple[int, ...]  # indices of points with J <= floor (not in rho or the log-log fit)
    alpha_ci: Interval
    beta_ci: Interval
    floor_ci: Interval
    rho_ci: Interval
    r2_ci: Interval
    extrapolation_error: float  # mean |log J_hat - log J| on the top compute third, fit on the rest
    extrapolation_points: int
    seed: int
    units: int  # independent resampling units (groups)
    boot: Bootstrap | None = field(default=None, repr=False, compare=False)

    def predict(self, compute) -> np.ndarray:
        """The fitted J(F)."""
        return self.floor + self.beta * np.asarray(compute, dtype=float) ** self.alpha

    def to_dict(self) -> dict:
        """JSON-ready summary (without the bootstrap samples)."""
        out = {k: getattr(self, k) for k in ("form", "alpha", "beta", "floor", "rho", "r2", "n",
                                            "extrapolation_error", "extrapolation_points", "seed",
                                            "units")}
        out["below_floor"] = list(self.below_floor)
        for k in ("alpha", "beta", "floor", "rho", "r2"):
            out[f"{k}_ci"] = getattr(self, f"{k}_ci").to_list()
        out["bootstrap_failed"] = self.boot.failed if self.boot is not None else 0
        return out


@dataclass(frozen=True)
class PairedDifference:
    """stat(a) - stat(b) on the same data, with a paired bootstrap interval."""

    stat: str
    value: float
    ci: Interval

    def to_dict(self) -> dict:
        return {"stat": self.stat, "value": self.value, "ci": self.ci.to_list()}


# --------------------------------------------------------------------------------------------
# Pure pieces.
# --------------------------------------------------------------------------------------------


def extrapolation_split(compute, fraction: float = 2 / 3) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) indices: the round(fraction * n) lowest-compute points, and the rest."""
    order = np.argsort(np.asarray(compute, dtype=float), kind="stable")
    k = int(round(fraction * len(order)))
    return np.sort(order[:k]), np.sort(order[k:])


def compute_frontier(compute, loss) -> np.ndarray:
    """Indices of the compute-optimal frontier: points with a lower loss than every point of lower or
    equal compute (the lower envelope over runs), in increasing compute."""
    compute, loss = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    order = np.lexsort((loss, compute))
    keep, best = [], math.inf
    for i in order:
        if loss[i] < best:
            keep.append(i)
            best = loss[i]
    return np.asarray(keep, dtype=int)


# --------------------------------------------------------------------------------------------
# The estimators, on weighted points: a weight row per resample (counts of each point drawn), so one
# code path gives the point estimate (all ones), the bootstrap and the extrapolation fit (0/1).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rows:
    """Parameters and statistics per weight row (nan where a row could not be fitted)."""

    alpha: np.ndarray
    beta: np.ndarray
    floor: np.ndarray
    rho: np.ndarray
    r2: np.ndarray


def _weighted_line(x, y, w) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slope, intercept, Pearson r) of y on x per row of weights w; nan with < 3 points or no spread."""
    sw = w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = (w * x).sum(1) / sw, (w * y).sum(1) / sw
        dx, dy = x - mx[:, None], y - my[:, None]
        sxx, sxy, syy = (w * dx * dx).sum(1), (w * dx * dy).sum(1), (w * dy * dy).sum(1)
        ok = ((w > 0).sum(1) >= 3) & (sxx > 1e-12 * np.maximum(sw, 1))
        slope = np.where(ok, sxy / sxx, np.nan)
        r = np.where(ok & (syy > 0), sxy / np.sqrt(sxx * syy), np.nan)
    return slope, my - slope * mx, r


def _row_stats(compute, loss, alpha, beta, floor, w) -> _Rows:
    """rho (on log(J - floor), points above the floor) and R^2 (on log J, all points) per row."""
    logf, logj = np.log(compute), np.log(np.where(loss > 0, loss, 1.0))
    above = loss > floor[:, None]
    gap = np.log(np.where(above, loss - floor[:, None], 1.0))
    _, _, r = _weighted_line(logf, gap, w * above)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        pred = floor[:, None] + beta[:, None] * compute ** alpha[:, None]
        wl = w * (loss > 0)
        resid = np.where(pred > 0, logj - np.log(np.where(pred > 0, pred, 1.0)), np.nan)
        mean = (wl * logj).sum(1) / wl.sum(1)
        ss_tot = (wl * (logj - mean[:, None]) ** 2).sum(1)
        r2 = np.where(ss_tot > 0, 1 - (wl * resid**2).sum(1) / ss_tot, np.nan)
    return _Rows(alpha, beta, floor, np.abs(r), r2)


def _linear_rows(compute, loss, floor, w) -> _Rows:
    """log(J - floor) = log beta + alpha log F by weighted least squares; floor per row."""
    above = loss > floor[:, None]
    gap = np.log(np.where(above, loss - floor[:, None], 1.0))
    slope, intercept, _ = _weighted_line(np.log(compute), gap, w * above)
    return _row_stats(compute, loss, slope, np.exp(intercept), floor, w)


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of r and its derivative, per element."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta)), np.clip(r, -delta, delta)


def _free_objective(theta, x, y, w, delta):
    """Weighted Huber loss of log J - log(exp(a + alpha x) + exp(e)) and its gradient in (a, alpha, e)."""
    a, alpha, e = theta
    with np.errstate(invalid="ignore", over="ignore"):  # trial steps of the line search may overflow
        u = a + alpha * x
        m = np.logaddexp(u, e)
        value, dh = _huber(y - m, delta)
        dh = w * dh
        s = np.exp(u - m)  # share of the power-law term
        return float(w @ value), -np.array([dh @ s, dh @ (s * x), dh @ (1 - s)])


def _free_starts(x, loss, w) -> list[tuple[float, float, float]]:
    """A grid of starting points: E a fraction of the smallest loss, alpha from the line or fixed."""
    starts, used = [], w > 0
    low = loss[used].min()
    for q in (0.0, 0.3, 0.6, 0.9):
        gap = np.log(np.where(used, loss - q * low, 1.0))  # unused points (weight 0) may lie below
        slope, _, _ = _weighted_line(x, gap[None, :], w[None, :])
        for alpha in dict.fromkeys([float(slope[0]), -0.05, -0.5]):
            if math.isfinite(alpha):
                a = float(w @ (gap - alpha * x) / w.sum())
                starts.append((a, alpha, math.log(max(q * low, 1e-12 * low))))
    return starts


def _fit_free(compute, loss, w, delta: float, starts=None) -> tuple[float, float, float]:
    """(alpha, beta, E) of J = E + beta F^alpha by weighted Huber loss on log J, best of `starts`."""
    used = w > 0
    if used.sum() < 3 or np.ptp(compute[used]) == 0 or np.any(loss[used] <= 0):
        return math.nan, math.nan, math.nan
    logf = np.log(compute)
    center = float(w @ logf / w.sum())  # centred log compute: its units do not matter
    x, y = logf - center, np.log(np.where(loss > 0, loss, 1.0))
    if starts is None:
        starts = _free_starts(x, loss, w)
    else:  # given as (log beta, alpha, log E) at F = 1: move a to this centre
        starts = [(lb + al * center, al, le) for lb, al, le in starts]
    best = None
    for start in starts:
        res = optimize.minimize(_free_objective, np.asarray(start, dtype=float), args=(x, y, w, delta),
                                jac=True, method="BFGS")
        if np.all(np.isfinite(res.x)) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        return math.nan, math.nan, math.nan
    a, alpha, e = best.x
    return float(alpha), float(math.exp(a - alpha * center)), float(math.exp(e))


def resample_starts(compute, loss, alpha: float, beta: float, floor: float) -> list | None:
    """Starts of the free form's resample fits (instead of its 12-point grid): the point estimate
    (alpha, beta, E) and the line through log(J - min J / 2); None if the point fit failed."""
    if not (math.isfinite(alpha) and beta > 0):
        return None
    compute, loss = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    half = 0.5 * float(loss.min())
    line, _, _ = _weighted_line(np.log(compute), np.log(loss - half)[None, :], np.ones((1, len(loss))))
    starts = [(math.log(beta), alpha, math.log(max(floor, 1e-300)))]
    if math.isfinite(line[0]):
        a = float(np.mean(np.log(loss - half) - line[0] * np.log(compute)))
        starts.append((a, float(line[0]), math.log(half)))
    return starts


def gather_rows(form, compute, loss, floor, w, delta, starts=None) -> _Rows:
    """Fit `form` once per weight row; `floor` (one per row) is used by the corrected form only."""
    if form != "free":
        return _linear_rows(compute, loss, floor if form == "corrected" else np.zeros(len(w)), w)
    fits = np.array([_fit_free(compute, loss, row, delta, starts) for row in w]).reshape(len(w), 3)
    return _row_stats(compute, loss, fits[:, 0], fits[:, 1], fits[:, 2], w)


def _check(compute, loss) -> tuple[np.ndarray, np.ndarray]:
    compute, loss = np.asarray(compute, dtype=float).ravel(), np.asarray(loss, dtype=float).ravel()
    if len(compute) != len(loss):
        raise InputError(f"{len(compute)} compute values for {len(loss)} losses")
    if len(compute) < 3:
        raise InputError(f"a scaling fit needs at least 3 points, got {len(compute)}")
    if not (np.all(np.isfinite(compute)) and np.all(compute > 0)):
        raise InputError("compute must be positive and finite")
    if not np.all(np.isfinite(loss)):
        raise InputError("losses must be finite")
    return compute, loss


def fit(form: str, compute, loss, floor: float | None = None, *, floor_stderr: float = 0.0, groups=None,
        n_boot: int = 1000, seed: int = 0, delta: float = HUBER_DELTA,
        extrapolation_fraction: float = 2 / 3) -> PowerLawFit:
    """Fit one form (`FORMS`) to (compute, loss) points; see the module docstring.

    floor: J* for the ``corrected`` form (required there, ignored otherwise); floor_stderr its standard
    error.  groups: one label per point; the bootstrap resamples whole groups (default: single points).
    """
    if form not in FORMS:
        raise InputError(f"unknown scaling form {form!r}; choose from {', '.join(FORMS)}")
    compute, loss = _check(compute, loss)
    if form == "corrected" and (floor is None or not math.isfinite(floor)):
        raise InputError("the corrected form needs a finite floor J*")
    floor = float(floor) if form == "corrected" else 0.0
    point = gather_rows(form, compute, loss, np.array([floor]), np.ones((1, len(loss))), delta)
    alpha, beta, fitted_floor = float(point.alpha[0]), float(point.beta[0]), float(point.floor[0])
    below = tuple(int(i) for i in np.nonzero(loss <= fitted_floor)[0]) if math.isfinite(fitted_floor) else ()

    w = bootstrap_weights(groups, len(loss), n_boot, seed)
    rng = np.random.default_rng([seed, 1])  # J* redraws: a stream apart from the resamples
    floors = floor + floor_stderr * rng.standard_normal(n_boot) if form == "corrected" else np.zeros(n_boot)
    starts = resample_starts(compute, loss, alpha, beta, fitted_floor) if form == "free" else None
    boot = Bootstrap(**vars(gather_rows(form, compute, loss, floors, w, delta, starts)))
    units = len(group_index(groups, len(loss)))

    extra, n_extra = extrapolation_error(form, compute, loss, floor, delta=delta,
                                         fraction=extrapolation_fraction)
    return PowerLawFit(form, alpha, beta, fitted_floor, float(point.rho[0]), float(point.r2[0]), len(loss),
                       below, *(percentile_interval(getattr(boot, k), units)
                                for k in ("alpha", "beta", "floor", "rho", "r2")),
                       extra, n_extra, seed, units, boot)


def extrapolation_error(form: str, compute, loss, floor: float | None = None, *, delta: float = HUBER_DELTA,
                        fraction: float = 2 / 3, starts=None) -> tuple[float, int]:
    """(mean |log J_hat - log J| on the top compute share, its number of points), fitting the form on
    the lowest-compute `fraction` of the points (the free form from `starts`, as in `gather_rows`, or its
    default grid); nan where the prediction is not positive."""
    compute, loss = _check(compute, loss)
    train, test = extrapolation_split(compute, fraction)
    if len(test) == 0:
        return math.nan, 0
    w = np.zeros((1, len(loss)))
    w[0, train] = 1
    p = gather_rows(form, compute, loss, np.array([0.0 if floor is None else float(floor)]), w, delta, starts)
    pred = p.floor[0] + p.beta[0] * compute[test] ** p.alpha[0]
    if not (np.all(pred > 0) and np.all(loss[test] > 0)):
        return math.nan, len(test)
    return float(np.mean(np.abs(np.log(pred) - np.log(loss[test])))), len(test)


def fit_all(compute, loss, floor: float, **kwargs) -> dict[str, PowerLawFit]:
    """All three forms on the same points with the same resamples (so they can be compared paired)."""
    return {form: fit(form, compute, loss, floor, **kwargs) for form in FORMS}


def paired_difference(a: PowerLawFit, b: PowerLawFit, stat: str = "rho",
                      level: float = LEVEL) -> PairedDifference:
    """stat(a) - stat(b) with a percentile interval over their common resamples (same seed and groups)."""
    if a.boot is None or b.boot is None or a.seed != b.seed or a.n != b.n:
        raise ValueError("paired differences need two fits of the same points with the same seed")
    diff = getattr(a.boot, stat) - getattr(b.boot, stat)
    return PairedDifference(stat, getattr(a, stat) - getattr(b, stat),
                            percentile_interval(diff, a.units, level))


# --------------------------------------------------------------------------------------------
# What the scaling study's report and `lossfloor fit` share: frontier fits, their summary, table rows.
# --------------------------------------------------------------------------------------------


def frontier_fits(compute, loss, floor, runs, n_boot: int, seed: int,
                  floor_stderr: float = 0.0) -> tuple[np.ndarray, dict[str, PowerLawFit]]:
    """(frontier indices, the three forms fitted on the compute-optimal frontier, resampling whole runs);
    no fits ({}) with fewer than 3 frontier points."""
    compute, loss = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    idx = compute_frontier(compute, loss)
    if len(idx) < 3:
        return idx, {}
    return idx, fit_all(compute[idx], loss[idx], floor, groups=np.asarray(runs)[idx], n_boot=n_boot,
                        seed=seed, floor_stderr=floor_stderr)


def fit_summary(fits: dict[str, PowerLawFit]) -> dict:
    """Each form's `to_dict` and the paired differences corrected - plain of rho and R^2."""
    out = {form: f.to_dict() for form, f in fits.items()}
    if "corrected" in fits and "plain" in fits:
        out["corrected_minus_plain"] = {s: paired_difference(fits["corrected"], fits["plain"], s).to_dict()
                                        for s in ("rho", "r2")}
    return out


FORM_HEAD = ["form", "ρ [95% CI]", "R² (log J) [95% CI]", "α [95% CI]", "floor", "extrap. error", "≤ floor"]


def _ci(fit: dict, key: str, digits: int = 3) -> str:
    lo, hi = fit[f"{key}_ci"]
    return f"{fit[key]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def form_rows(fits: dict) -> list[list[str]]:
    """Table rows (`FORM_HEAD`) of a `fit_summary`: one per form."""
    rows = []
    for form in FORMS:
        if form not in fits:
            continue
        f = fits[form]
        rows.append([form, _ci(f, "rho", 4), _ci(f, "r2", 4), _ci(f, "alpha", 4),
                     f"{f['floor']:.4g}" + (f" [{f['floor_ci'][0]:.4g}, {f['floor_ci'][1]:.4g}]"
                                            if form == "free" else ""),
                     f"{f['extrapolation_error']:.4f}", str(len(f["below_floor"]))])
    return rows
