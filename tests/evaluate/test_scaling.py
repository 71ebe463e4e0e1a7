"""Scaling-law fits: parameter recovery, bootstrap coverage, hand-computed statistics, the compute split."""

import math

import numpy as np
import pytest
import scipy.stats

from lossfloor.evaluate import bootstrap, scaling

ALPHA, BETA, FLOOR = -0.3, 4.0, 0.05
NOISE = 0.03  # standard deviation of the multiplicative (log) noise on the power-law term


def synthetic(form: str, n: int, rng, groups: int | None = None, run_sd: float = 0.0):
    """Points floor + beta F^alpha exp(noise), floor = 0 for the plain form; optional run effects."""
    floor = 0.0 if form == "plain" else FLOOR
    compute = np.geomspace(1e9, 1e13, n)
    labels = None if groups is None else np.arange(n) * groups // n  # runs: contiguous compute ranges
    noise = NOISE * rng.standard_normal(n)
    if labels is not None:
        noise = noise + run_sd * rng.standard_normal(groups)[labels]
    return compute, floor + BETA * compute**ALPHA * np.exp(noise), labels, floor


def _width(samples, units, idx=None) -> float:
    """The expanded percentile interval's width of bootstrap samples (optionally re-indexed)."""
    s = samples if idx is None else samples[idx]
    lo, hi = np.quantile(s[np.isfinite(s)], bootstrap.expanded_quantiles(units))
    return float(hi - lo)


def width_mc_se(samples, other, units, reps=400) -> float:
    """Monte-Carlo standard error of an interval's width (minus `other`'s on the same resamples), by
    redrawing the bootstrap replicates themselves."""
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(reps):
        idx = rng.integers(len(samples), size=len(samples))
        diffs.append(_width(samples, units, idx) - (0.0 if other is None else _width(other, units, idx)))
    return float(np.std(diffs, ddof=1))


def normal_theory_width(fit, compute, loss) -> float:
    """2 z sd(alpha), sd from the linearised least-squares covariance s^2 (J^T J)^-1 of log residuals
    (z at the expanded quantile of the fit's units)."""
    x = np.log(compute) - np.log(compute).mean()
    power = fit.beta * np.exp(fit.alpha * np.log(compute).mean()) * np.exp(fit.alpha * x)
    if fit.form == "free":
        model = fit.floor + power
        jac, resid = np.c_[power / model, power * x / model, fit.floor / model], np.log(loss / model)
    else:
        jac, resid = np.c_[np.ones_like(x), x], np.log((loss - fit.floor) / power)
    s2 = np.sum(resid**2) / (len(x) - jac.shape[1])
    sd = math.sqrt(s2 * np.linalg.inv(jac.T @ jac)[1, 1])
    return 2 * float(scipy.stats.norm.ppf(bootstrap.expanded_quantiles(fit.units)[1])) * sd


@pytest.mark.parametrize("form", ["plain", "corrected", pytest.param("free", marks=pytest.mark.slow)])
def test_recovers_parameters_within_intervals(form):
    compute, loss, groups, floor = synthetic(form, 30, np.random.default_rng(3), groups=10)
    fit = scaling.fit(form, compute, loss, floor, groups=groups, n_boot=200, seed=0)
    assert ALPHA in fit.alpha_ci and BETA in fit.beta_ci
    # Informative, not vacuous: the width is the normal-theory (least-squares) width within 3 standard
    # deviations of its ratio to it: the bootstrap's Monte-Carlo error plus the sampling error of a variance
    # from `units` groups and of the residual variance (n - p degrees of freedom).
    width, theory = fit.alpha_ci.high - fit.alpha_ci.low, normal_theory_width(fit, compute, loss)
    spread = math.sqrt((width_mc_se(fit.boot.alpha, None, fit.units) / width) ** 2
                       + 1 / (2 * (fit.units - 1)) + 1 / (2 * (fit.n - (3 if form == "free" else 2))))
    assert abs(width / theory - 1) <= 3 * spread, (width, theory, spread)  # 0.94-0.98 here, spread ~0.3
    if form == "free":
        assert FLOOR in fit.floor_ci and fit.floor_ci.low > 0
    else:
        assert fit.floor == floor and fit.floor_ci.low == fit.floor_ci.high == floor
    assert fit.below_floor == () and fit.boot.failed == 0
    assert fit.rho > 0.99 and fit.r2 > 0.98
    assert fit.extrapolation_error < 3 * NOISE and fit.extrapolation_points == 10


@pytest.mark.slow
@pytest.mark.parametrize("form", ["plain", "corrected"])
def test_bootstrap_intervals_cover_at_nominal_rate(form):
    """Over R independent data sets with run-level effects, the 95% interval of alpha from resampling
    whole runs must cover the truth in 95% +- 3 binomial standard errors of the draws (a point-level
    bootstrap, which ignores the run effects, covers ~86% here and fails)."""
    reps, rng = 300, np.random.default_rng(11)
    hits = 0
    for r in range(reps):
        compute, loss, groups, floor = synthetic(form, 40, rng, groups=20, run_sd=0.05)
        fit = scaling.fit(form, compute, loss, floor, groups=groups, n_boot=300, seed=r)
        hits += ALPHA in fit.alpha_ci
    se = math.sqrt(bootstrap.LEVEL * (1 - bootstrap.LEVEL) / reps)
    assert abs(hits / reps - bootstrap.LEVEL) <= 3 * se, hits / reps


def test_point_bootstrap_undercovers_with_run_effects():
    """The negative control of the coverage test: the same data, resampling single points."""
    reps, rng = 100, np.random.default_rng(11)
    hits = 0
    for r in range(reps):
        compute, loss, _, _ = synthetic("plain", 40, rng, groups=20, run_sd=0.05)
        hits += ALPHA in scaling.fit("plain", compute, loss, n_boot=300, seed=r).alpha_ci
    assert hits / reps < bootstrap.LEVEL - 3 * math.sqrt(bootstrap.LEVEL * (1 - bootstrap.LEVEL) / reps)


def test_rho_and_r2_by_hand():
    compute = np.array([1.0, 10.0, 100.0, 1000.0])
    loss = np.array([1.0, 0.5, 0.3, 0.2])
    # Plain: x = log F, y = log J; r = Sxy / sqrt(Sxx Syy).
    x, y = [math.log(f) for f in compute], [math.log(v) for v in loss]
    mx, my = sum(x) / 4, sum(y) / 4
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    plain = scaling.fit("plain", compute, loss, n_boot=10)
    assert plain.rho == pytest.approx(abs(sxy) / math.sqrt(sxx * syy), rel=1e-12)
    assert plain.r2 == pytest.approx(sxy**2 / (sxx * syy), rel=1e-12)  # = rho^2 for a straight line
    assert plain.alpha == pytest.approx(sxy / sxx, rel=1e-12)
    assert plain.beta == pytest.approx(math.exp(my - sxy / sxx * mx), rel=1e-12)
    # Corrected with J* = 0.1: rho on log(J - J*); R^2 on log J against log(J* + beta F^alpha).
    y2 = [math.log(v - 0.1) for v in loss]
    m2 = sum(y2) / 4
    s2y = sum((a - mx) * (b - m2) for a, b in zip(x, y2, strict=True))
    s22 = sum((b - m2) ** 2 for b in y2)
    slope = s2y / sxx
    beta = math.exp(m2 - slope * mx)
    pred = [math.log(0.1 + beta * f**slope) for f in compute]
    r2 = 1 - sum((a - b) ** 2 for a, b in zip(y, pred, strict=True)) / syy
    corrected = scaling.fit("corrected", compute, loss, 0.1, n_boot=10)
    assert corrected.rho == pytest.approx(abs(s2y) / math.sqrt(sxx * s22), rel=1e-12)
    assert corrected.r2 == pytest.approx(r2, rel=1e-12)
    assert corrected.rho > plain.rho  # this J flattens towards 0.1


def test_extrapolation_split_is_by_compute_not_order():
    rng = np.random.default_rng(0)
    compute = rng.permutation(np.geomspace(1.0, 1e6, 9))
    loss = 2.0 * compute**-0.2 * np.exp(0.05 * rng.standard_normal(9))
    train, test = scaling.extrapolation_split(compute)
    assert len(train) == 6 and len(test) == 3
    assert compute[train].max() < compute[test].min()
    slope, intercept = np.polyfit(np.log(compute[train]), np.log(loss[train]), 1)
    expected = np.mean(np.abs(intercept + slope * np.log(compute[test]) - np.log(loss[test])))
    error, points = scaling.extrapolation_error("plain", compute, loss)
    assert points == 3 and error == pytest.approx(expected, rel=1e-10)
    assert scaling.fit("plain", compute, loss, n_boot=10).extrapolation_error == pytest.approx(expected)


def test_points_at_or_below_the_floor_are_reported():
    compute = np.geomspace(1e3, 1e7, 8)
    loss = 0.1 + compute**-0.25
    loss[[2, 5]] = [0.1, 0.09]  # at and below J*
    fit = scaling.fit("corrected", compute, loss, 0.1, n_boot=50)
    assert fit.below_floor == (2, 5) and fit.n == 8
    assert fit.alpha == pytest.approx(-0.25, rel=1e-9)  # fitted on the other six, exactly
    assert math.isfinite(fit.r2)  # R^2 (log J) still covers all eight points


def test_frontier_is_the_lower_envelope():
    compute = np.array([1, 2, 4, 8, 2, 4, 8, 16], dtype=float)
    loss = np.array([1.0, 0.8, 0.7, 0.65, 0.9, 0.6, 0.4, 0.3])
    assert scaling.compute_frontier(compute, loss).tolist() == [0, 1, 5, 6, 7]


def test_paired_difference_needs_common_resamples():
    compute, loss, groups, _ = synthetic("corrected", 20, np.random.default_rng(1), groups=5)
    fits = scaling.fit_all(compute, loss, FLOOR, groups=groups, n_boot=100, seed=4)
    diff = scaling.paired_difference(fits["corrected"], fits["plain"], "rho")
    assert diff.value == pytest.approx(fits["corrected"].rho - fits["plain"].rho)
    assert diff.ci.low <= diff.value <= diff.ci.high and diff.ci.low > 0  # the floor is real here
    other = scaling.fit("plain", compute, loss, groups=groups, n_boot=100, seed=5)
    with pytest.raises(ValueError, match="same seed"):
        scaling.paired_difference(fits["corrected"], other)


def test_floor_stderr_widens_the_corrected_interval():
    compute, loss, _, _ = synthetic("corrected", 30, np.random.default_rng(2))
    exact = scaling.fit("corrected", compute, loss, FLOOR, n_boot=200)
    loose = scaling.fit("corrected", compute, loss, FLOOR, floor_stderr=0.01, n_boot=200)
    # Paired (the same resamples): wider by more than 3 Monte-Carlo standard errors of the difference.
    width = lambda f: f.alpha_ci.high - f.alpha_ci.low  # noqa: E731
    assert width(loose) - width(exact) > 3 * width_mc_se(loose.boot.alpha, exact.boot.alpha, exact.units)


@pytest.mark.parametrize("args, message", [
    (("cubic", [1, 2, 3], [1, 1, 1]), "unknown scaling form"),
    (("plain", [1, 2], [1, 1]), "at least 3"),
    (("plain", [1, 2, -3], [1, 1, 1]), "compute must be positive"),
    (("plain", [1, 2, 3], [1, np.nan, 1]), "finite"),
    (("corrected", [1, 2, 3], [1, 1, 1]), "needs a finite floor"),
])
def test_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        scaling.fit(*args)
