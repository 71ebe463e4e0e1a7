"""Seed-averaged frontier fits with a stratified run bootstrap: grouping, resampling, coverage of a planted
exponent, the free floor against a planted J*."""

import math

import numpy as np
import pytest

from lossfloor.core.errors import InputError
from lossfloor.evaluate import bootstrap
from lossfloor.evaluate.frontier import Curves, fit_point, frontier_study

ALPHA, BETA, JSTAR = -0.35, 30.0, 0.2
STEPS = np.unique(np.geomspace(10, 8000, 12).astype(int))


def runs(rng, sizes=7, seeds=3, run_sd=0.05, point_sd=0.02, floor=JSTAR, capacity=0.0):
    """Points of `sizes` model sizes x `seeds` runs: J = floor + beta C^alpha e^{noise} + capacity / 2^h,
    C = 2^h 1e6 x step (a size's per-step compute doubles with h)."""
    c, j, s, r = [], [], [], []
    for h in range(sizes):
        compute = 2.0**h * 1e6 * STEPS
        for k in range(seeds):
            noise = run_sd * rng.standard_normal() + point_sd * rng.standard_normal(len(STEPS))
            c.append(compute)
            j.append(floor + BETA * compute**ALPHA * np.exp(noise) + capacity / 2.0**h)
            s.append(np.full(len(STEPS), h))
            r.append(np.full(len(STEPS), k))
    return tuple(np.concatenate(a) for a in (c, j, s, r))


def test_curves_group_by_size_and_average_over_runs():
    rng = np.random.default_rng(0)
    c, j, s, r = runs(rng, sizes=3, seeds=2)
    curves = Curves.from_points(c, j, s, r)
    assert curves.sizes == (0, 1, 2) and curves.runs == 6 and curves.stratified()
    compute, mean, size = curves.mean()
    first = (s == 1) & (c == 2e6 * STEPS[0])
    assert mean[(size == 1) & (compute == 2e6 * STEPS[0])][0] == pytest.approx(j[first].mean())
    with pytest.raises(InputError, match="checkpoints"):
        Curves.from_points(c[1:], j[1:], s[1:], r[1:])


def test_stratified_resamples_keep_every_size_and_use_the_stratified_expansion():
    c, j, s, r = runs(np.random.default_rng(1), sizes=4, seeds=3)
    curves = Curves.from_points(c, j, s, r)
    means = curves.resampled_means(50, seed=0)
    assert means.shape == (50, 4 * len(STEPS)) and np.isfinite(means).all()
    assert curves.quantiles() == bootstrap.expanded_quantiles(12, strata=4)
    # 3 runs per size: sqrt(3/2) t_8 is wider than sqrt(12/11) t_11 (unstratified).
    assert curves.quantiles()[1] > bootstrap.expanded_quantiles(12)[1]
    # One run per size: runs are resampled across sizes, a size not drawn is left out.
    single = Curves.from_points(*runs(np.random.default_rng(2), sizes=5, seeds=1))
    assert not single.stratified()
    assert np.isnan(single.resampled_means(40, seed=0)).any()


def test_corrected_exponent_interval_covers_the_planted_one():
    """60 synthetic studies (7 sizes x 3 runs, run effects): the corrected form's alpha interval, frontier
    re-chosen per resample, covers the planted exponent in 85-100% of them (nominal 95%)."""
    rng = np.random.default_rng(3)
    hits = 0
    reps = 60
    for rep in range(reps):
        curves = Curves.from_points(*runs(rng))
        study = frontier_study(curves, JSTAR, n_boot=200, seed=rep, forms=("corrected",))
        lo, hi = study.interval(study.boot["corrected"]["alpha"])
        hits += lo <= ALPHA <= hi
    assert 0.85 <= hits / reps <= 1.0


def test_a_real_floor_bends_the_plain_fit_and_the_free_floor_finds_it():
    rng = np.random.default_rng(4)
    curves = Curves.from_points(*runs(rng, run_sd=0.02, point_sd=0.01))
    study = frontier_study(curves, JSTAR, n_boot=40, seed=0)
    out = study.summary()
    d = out["corrected_minus_plain"]["rho"]
    assert d["value"] > 0 and d["ci"][0] > 0 and d["detectable"] > 0
    assert out["corrected"]["alpha_ci"][0] <= ALPHA <= out["corrected"]["alpha_ci"][1]
    assert out["corrected"]["extrapolation_error"] < out["plain"]["extrapolation_error"]
    e = out["free_floor_minus_jstar"]
    assert abs(e["value"]) < 0.05 * JSTAR and e["ci"][0] <= 0 <= e["ci"][1]
    assert set(out["frontier_share"]) == {str(h) for h in range(7)} and len(out["frontier_sizes"]) >= 3


def test_capacity_limits_put_several_sizes_on_the_frontier():
    """Small sizes plateau (a capacity term falling with size): the frontier moves to larger sizes."""
    curves = Curves.from_points(*runs(np.random.default_rng(5), capacity=0.5, point_sd=0.005))
    study = frontier_study(curves, JSTAR, n_boot=20, seed=0, forms=("plain",))
    assert len(study.summary()["frontier_sizes"]) >= 4


def test_fit_point_recovers_an_exact_power_law():
    compute = np.geomspace(1e6, 1e10, 9)
    loss = JSTAR + BETA * compute**ALPHA
    fit = fit_point("corrected", compute, loss, JSTAR)
    assert fit["alpha"] == pytest.approx(ALPHA, rel=1e-9) and fit["rho"] == pytest.approx(1.0)
    assert fit["extrapolation_error"] == pytest.approx(0.0, abs=1e-9) and fit["extrapolation_points"] == 3
    assert math.isfinite(fit_point("free", compute, loss, JSTAR)["floor"])


def test_a_floor_standard_error_widens_the_corrected_intervals():
    curves = Curves.from_points(*runs(np.random.default_rng(6), run_sd=0.01, point_sd=0.005))
    exact = frontier_study(curves, JSTAR, n_boot=200, seed=0, forms=("plain", "corrected"))
    unsure = frontier_study(curves, JSTAR, n_boot=200, seed=0, forms=("plain", "corrected"),
                            floor_stderr=0.01)
    assert np.std(unsure.jstar_draws) == pytest.approx(0.01, rel=0.2) and np.all(exact.jstar_draws == JSTAR)

    def width(study, form):
        lo, hi = study.interval(study.boot[form]["alpha"])
        return hi - lo

    assert width(unsure, "corrected") > 1.5 * width(exact, "corrected")
    assert width(unsure, "plain") == pytest.approx(width(exact, "plain"))  # the plain form has no floor
    assert unsure.fits == exact.fits  # the point estimate uses J* itself
