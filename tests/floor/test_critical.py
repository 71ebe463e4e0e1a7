"""sigma* by monotone interpolation of the 1% crossing (issue 19): grid-independent within its stated
interpolation uncertainty, and the sigma bands a diagnosis splits its gap into."""

import math

import numpy as np
import pytest

from lossfloor.floor.critical import band_rows, band_summary, critical_sigma
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.floor.reference import gaussian_optimal_loss, two_point_optimal_loss
from lossfloor.objective.objective import get_objective

EIGEN = [1.0, 0.1, 0.01, 0.001]
CASES = [(two_point_optimal_loss, 1.0, 0.3676505), (lambda s: gaussian_optimal_loss(s, EIGEN), np.mean(EIGEN),
                                                    0.0620286)]


@pytest.mark.parametrize(("exact", "variance", "truth"), CASES)
def test_critical_sigma_is_grid_independent_within_its_error(exact, variance, truth):
    found = []
    for levels, lo in ((13, 0.01), (23, 0.003), (16, 0.02), (40, 0.01)):
        s = np.geomspace(lo, 100, levels)
        c = critical_sigma(s, exact(s), variance)
        assert c.lower <= c.value <= c.upper and c.error > 0
        assert abs(c.value - truth) <= c.error, (levels, c)  # the truth inside the stated uncertainty
        found.append(c)
    for a in found:
        for b in found:
            assert abs(a.value - b.value) <= a.error + b.error
    # The smallest grid level above 1% (the old sigma*) moved with the grid by far more.
    assert abs(found[0].upper - found[1].upper) > 10 * (found[0].error + found[1].error)


def test_the_curve_and_its_json_use_it():
    s = np.geomspace(0.01, 100, 13)
    curve = OptimalLossCurve(s, two_point_optimal_loss(s), np.zeros(13), 1.0, 2, 1)
    c = critical_sigma(s, curve.loss, 1.0)
    assert curve.critical_sigma() == c.value and curve.critical() == c
    d = curve.to_dict()
    assert d["critical_sigma"] == c.value and d["critical_sigma_error"] == c.error
    assert "± " in str(c) and "interpolation" in str(c)
    assert math.isnan(critical_sigma([1.0, 2.0], [0.0, 0.001], 1.0).value)


def test_split_total_adds_up_to_the_total():
    s = np.geomspace(0.01, 100, 25)
    curve = OptimalLossCurve(s, two_point_optimal_loss(s), np.zeros(25), 1.0, 2, 1)
    for name in ("edm", "flow", "vp"):
        obj = get_objective(name)
        parts = curve.split_total(obj, [0.1, 1.0, 10.0])
        assert len(parts) == 4 and parts.sum() == pytest.approx(curve.total(obj, warn=False).value, rel=1e-12)


def test_band_summary_reads_like_the_issue():
    rows = band_rows([0.05, 0.5, 5.0], [0.62, 0.3, 0.08, 0.0])
    assert [r["share"] for r in rows] == pytest.approx([0.62, 0.3, 0.08, 0.0])
    assert band_summary(rows) == ("62% of the gap at σ < 0.05, 30% at 0.05 ≤ σ < 0.5, 8% at 0.5 ≤ σ < 5, "
                                  "0% at σ ≥ 5")
    negative = band_rows([1.0], [-0.1, 0.05])
    assert band_summary(negative).startswith("weighted gap -0.1 at σ < 1")


def test_the_monte_carlo_error_is_the_standard_error_over_the_slope():
    s = np.geomspace(0.01, 100, 16)
    loss = two_point_optimal_loss(s)
    c = critical_sigma(s, loss, 1.0, stderr=0.02 * loss)  # 2% at every level: 2e-4 at the crossing
    h = 1e-5
    slope = (two_point_optimal_loss(c.value + h) - two_point_optimal_loss(c.value - h)) / (2 * h)
    assert c.mc_error == pytest.approx(0.02 * 0.01 / slope, rel=0.1)
    assert critical_sigma(s, loss, 1.0).mc_error == 0.0  # no standard errors, no Monte-Carlo error


def test_a_level_exactly_at_the_fraction_is_the_crossing():
    c = critical_sigma([0.1, 1.0, 10.0], [0.01, 0.3, 0.9], 1.0)
    assert c.value == pytest.approx(0.1) and 0.1 <= c.value <= 1.0
