"""OptimalLossCurve.sensitivity is d total / d J_i: against central finite differences of total().value."""

import numpy as np
import pytest

from lossfloor.data.load import load_dataset
from lossfloor.floor.config import EstimatorConfig
from lossfloor.floor.curve import LINEAR_SE, OptimalLossCurve
from lossfloor.floor.estimator import Estimator
from lossfloor.floor.interpolation import ZERO_FLOOR, _from_z, _to_z
from lossfloor.floor.reference import two_point_optimal_loss
from lossfloor.objective.objective import get_objective

EPS = np.finfo(float).eps
STEP = 1e-3  # finite-difference step in z = logit(J/V) (or log J), times the gap to the nearer neighbour


def two_point(levels=17):
    grid = np.geomspace(0.002, 80, levels)
    loss = two_point_optimal_loss(grid)
    return OptimalLossCurve(grid, loss, 1e-3 * loss, 1.0, 2, 1)


def digits():
    curve = Estimator(load_dataset("digits").rows(), EstimatorConfig(queries=64)).curve(
        np.geomspace(1e-3, 1e3, 25), seed=0)
    assert (curve.loss == 0).sum() >= 3 and curve._tail() > 0  # zero levels and a tail
    return curve


def zero_levels():
    """Two-point levels with those below 1e-15 read as 0 and given an upper bound as their stderr."""
    curve = two_point(21)
    zero = curve.loss < 1e-15
    loss, se = np.where(zero, 0.0, curve.loss), np.where(zero, 1e-12, curve.stderr)
    return OptimalLossCurve(curve.sigma, loss, se, 1.0, 2, 1)


CURVES = {"two-point": two_point, "digits": digits, "zero-levels": zero_levels}


def _moved(curve, i, value):
    loss = curve.loss.copy()
    loss[i] = value
    return OptimalLossCurve(curve.sigma, loss, curve.stderr, curve.data_variance, curve.n, curve.dim)


def _central(curve, obj, i, h):
    """(T(z_i + h g) - T(z_i - h g)) / (J+ - J-), g = min(1, the gap to the nearer neighbouring z): each
    total recomputed from scratch (tail scale included).  Levels near V that differ by less than their
    noise make PCHIP bend (and kink) on the scale of g, not of 1."""
    v, logit = curve.data_variance, curve._logit()
    z = _to_z(curve.loss, v, logit)
    g = min([1.0] + [abs(z[k] - z[i]) for k in (i - 1, i + 1) if 0 <= k < len(z)])
    up, down = _from_z(z[i] + np.array([h * g, -h * g]), v, logit)
    t = [_moved(curve, i, x).total(obj, warn=False).value for x in (up, down)]
    return (t[0] - t[1]) / (up - down), up - down


@pytest.mark.parametrize("name", ["edm", "flow", "vp"])
@pytest.mark.parametrize("which", list(CURVES))
def test_sensitivity_is_the_derivative_of_the_total(which, name):
    """Central differences at steps h and h/2 (truncation error ~h^2): the derivative lies within
    |D(h) - D(h/2)| (three times D(h/2)'s estimated truncation error) plus the rounding of the totals, at
    every level whose stderr is at most LINEAR_SE of it (elsewhere the secant: the next test)."""
    curve, obj = CURVES[which](), get_objective(name)
    sens = curve.sensitivity(obj)
    total = curve.total(obj, warn=False).value
    positive = np.flatnonzero((curve.loss > ZERO_FLOOR * curve.data_variance)
                              & (curve.stderr <= LINEAR_SE * curve.loss))
    assert len(positive) >= 8
    for i in positive:
        coarse, _ = _central(curve, obj, i, STEP)
        fine, dj = _central(curve, obj, i, STEP / 2)
        rounding = 1e3 * EPS * abs(total) / abs(dj)  # ~1e3 rounding errors of the total, over the step
        assert abs(sens[i] - fine) <= abs(coarse - fine) + rounding, (i, sens[i], fine, coarse)


def test_the_tail_scale_matters_here():
    # The derivative at fixed tail scale (the old sensitivity) is several percent off on two-point data, far
    # outside the tolerance above: the test can fail.
    curve, obj = two_point(), get_objective("edm")
    grad = curve.sensitivity(obj)
    i = 7  # J ~ 2e-6, in the tail fit
    fine, _ = _central(curve, obj, i, STEP / 2)
    coarse, _ = _central(curve, obj, i, STEP)
    assert abs(grad[i] - fine) <= abs(coarse - fine)
    import lossfloor.floor.curve as module

    try:
        saved, module.tail_scale_gradient = module.tail_scale_gradient, lambda g, j, v: np.zeros(len(g))
        fixed = curve.sensitivity(obj)
    finally:
        module.tail_scale_gradient = saved
    assert abs(fixed[i] / fine - 1) > 0.03 and abs(fixed[i] - fine) > 100 * abs(coarse - fine)


def test_zero_level_sensitivity_is_the_secant_over_its_stderr():
    # At J_i = 0 the total has no derivative (its right derivative is unbounded): the secant over [0, se].
    curve, obj = zero_levels(), get_objective("edm")
    sens = curve.sensitivity(obj)
    zero = np.flatnonzero(curve.loss == 0)
    assert len(zero) >= 3
    base = curve.total(obj, warn=False).value
    for i in zero:
        se = curve.stderr[i]
        want = (_moved(curve, i, se).total(obj, warn=False).value - base) / se
        assert sens[i] == pytest.approx(want, rel=1e-12, abs=0)
    se = np.where(curve.loss == 0, 0.0, curve.stderr)
    no_stderr = OptimalLossCurve(curve.sigma, curve.loss, se, 1.0, 2, 1)
    assert np.all(no_stderr.sensitivity(obj)[zero] == 0)


@pytest.mark.parametrize("name", ["edm", "flow"])
def test_noisy_level_sensitivity_is_the_secant_over_its_range(name):
    # Where a level's stderr exceeds LINEAR_SE of it (digits at 64 queries: the tail levels), the sensitivity
    # is the secant of the total over [max(J - se, 0), J + se], every total recomputed.
    curve, obj = digits(), get_objective(name)
    sens = curve.sensitivity(obj)
    wide = np.flatnonzero((curve.loss > 0) & (curve.stderr > LINEAR_SE * curve.loss))
    assert len(wide) >= 2
    for i in wide:
        lo, hi = max(curve.loss[i] - curve.stderr[i], 0.0), curve.loss[i] + curve.stderr[i]
        t = [_moved(curve, i, x).total(obj, warn=False).value for x in (lo, hi)]
        assert sens[i] == pytest.approx((t[1] - t[0]) / (hi - lo), rel=1e-9, abs=0)


def test_sensitivity_cannot_explode_at_a_numerically_zero_level():
    # The class-conditional total: one tail level at J ~ 2.6e-17 with a stderr far above it made
    # d total / d J ~ -5e7 through the tail scale (d a / d J ~ 1 / J), and the total's Monte-Carlo stderr 10x
    # the unconditional one.  Its contribution to the Monte-Carlo error is now at most the change of the total
    # over the level's range, and the total's stderr stays of the order of the clean curve's.
    clean = two_point(33)
    i = int(np.flatnonzero(clean.loss < 1e-12)[-1]) + 1  # the first level above 1e-12, in the tail fit
    loss, se = clean.loss.copy(), clean.stderr.copy()
    loss[i], se[i] = 2.6e-17, 1e-10
    noisy = OptimalLossCurve(clean.sigma, loss, se, 1.0, 2, 1)
    for name in ("edm", "flow"):
        obj = get_objective(name)
        sens = noisy.sensitivity(obj)
        t = [_moved(noisy, i, x).total(obj, warn=False).value for x in (0.0, loss[i] + se[i])]
        assert abs(sens[i] * se[i]) <= abs(t[1] - t[0]) * (1 + 1e-9)
        assert noisy.total(obj, warn=False).mc_stderr <= 2 * clean.total(obj, warn=False).mc_stderr
