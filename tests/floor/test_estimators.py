"""Estimators of J*(sigma) against exact answers: 1-D quadrature, Gaussian data, the full estimator."""

import math

import numpy as np
import pytest
import torch

from lossfloor.floor.config import EstimatorConfig, LevelEstimate, stratified_sources
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.floor.estimator import Estimator
from lossfloor.floor.reference import (
    gaussian_optimal_loss,
    optimal_loss_1d,
    optimal_loss_1d_curve,
    two_point_optimal_loss,
)
from lossfloor.objective.objective import get_objective

POINTS = np.array([-1.0, -0.7, 0.2, 1.5, 1.6])
SIGMAS_1D = [0.05, 0.1, 0.2, 0.4, 1.0, 3.0, 10.0]  # J* from 5e-4 to 0.99 of the variance


def _within(est, want, k=3.0):
    assert abs(est.loss - want) <= k * est.stderr, (est, want, (est.loss - want) / est.stderr)


def test_two_point_reference_is_exact():
    # x0 = +-1: E[x0 | x~] = tanh(x~ / s^2), so J* = E[1 - tanh^2(x~ / s^2)], x~ ~ N(1, s^2) by symmetry.
    for s in (0.3, 1.0, 3.0):  # a dense trapezoid rule, independent of the adaptive quadrature
        x = np.linspace(1 - 14 * s, 1 + 14 * s, 400001)
        f = np.exp(-0.5 * ((x - 1) / s) ** 2) / (s * math.sqrt(2 * math.pi)) * (1 - np.tanh(x / s**2) ** 2)
        want = np.sum((f[1:] + f[:-1]) / 2 * np.diff(x))
        assert optimal_loss_1d([-1.0, 1.0], s) == pytest.approx(want, rel=1e-8)


@pytest.mark.parametrize("config", [
    EstimatorConfig("full", queries=4000),
    EstimatorConfig("full", queries=4000, form="global"),
    EstimatorConfig("dol", queries=1000, subset=5),  # a subset that is the whole dataset is exact
    EstimatorConfig("cdol", queries=1000, subset=5, C=1.0),
], ids=["full", "full-global", "dol-L=N", "cdol-L=N-C=1"])
def test_agrees_with_1d_quadrature(config):
    est = Estimator(torch.tensor(POINTS[:, None]), config, dtype=torch.float64)
    ref = optimal_loss_1d_curve(POINTS, SIGMAS_1D)
    for s, want in zip(SIGMAS_1D, ref, strict=True):
        _within(est.level(s, seed=0), want)


def test_gaussian_data_at_moderate_and_large_sigma():
    """N = 20000 samples of N(0, diag(0.5, 2)).  The estimator targets the *empirical* J*, and the
    comparison is with the Gaussian that has the sample mean and covariance: a linear denoiser's risk
    depends only on the first two moments, so that Gaussian's J* is the risk of a (suboptimal) linear
    denoiser on the sample, and empirical J* <= it exactly (one-sided check).  The deficit is the
    Fisher divergence between the noised sample and that Gaussian, ~ sigma^2 / N_eff with N_eff =
    N prod_i (s^2 / (s^2 + l_i))^(1/2) sample points within a kernel width (measured: 0 to 2.4 times
    that), so the two-sided tolerance is 3 SE above and 3 SE plus that deficit below."""
    g = torch.Generator().manual_seed(1)
    lam = torch.tensor([0.5, 2.0], dtype=torch.float64)
    x = torch.randn(20000, 2, generator=g, dtype=torch.float64) * lam.sqrt()
    xc = x - x.mean(0)
    eig = torch.linalg.eigvalsh(xc.T @ xc / len(x)).numpy()
    est = Estimator(x, EstimatorConfig("full", queries=1000), dtype=torch.float64)
    for s in (0.6, 1.0, 2.0, 4.0):
        lvl, want = est.level(s, seed=0), float(gaussian_optimal_loss(s, eig))
        deficit = 2.4 * s**2 / (len(x) * np.prod(np.sqrt(s**2 / (s**2 + eig))))
        assert deficit < 0.003 * want  # "N large": the deficit is a small fraction of J*
        assert want - 3 * lvl.stderr - deficit <= lvl.loss <= want + 3 * lvl.stderr


def test_empirical_is_below_gaussian_at_small_sigma():
    # Near the sample spacing the discreteness shows: strictly below the linear-denoiser bound.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5000, 3, generator=g, dtype=torch.float64)
    xc = x - x.mean(0)
    eig = torch.linalg.eigvalsh(xc.T @ xc / len(x)).numpy()
    lvl = Estimator(x, EstimatorConfig("full", queries=2000), dtype=torch.float64).level(0.3, seed=0)
    assert lvl.loss < float(gaussian_optimal_loss(0.3, eig)) - 5 * lvl.stderr


@pytest.fixture(scope="module")
def clusters():
    """12 clusters of std 0.5 in D = 8 (nearest-neighbour distance ~0.9), N = 1200."""
    g = torch.Generator().manual_seed(0)
    centers = 1.5 * torch.randn(12, 8, generator=g)
    labels = torch.randint(12, (1200,), generator=g)
    return centers[labels] + 0.5 * torch.randn(1200, 8, generator=g), labels


CLUSTER_SIGMAS = [0.05, 0.2, 0.4, 0.7, 1.2, 2.5, 6.0]


@pytest.fixture(scope="module")
def full_curve(clusters):
    return Estimator(clusters[0], EstimatorConfig("full", queries=2400)).curve(CLUSTER_SIGMAS)


def test_cdol_quarter_subset_matches_full(clusters, full_curve):
    # cDOL with L = N/4 and the default C = 4N/L = 16 (research note 3.6: the paper's empirical optimum).
    x, _ = clusters
    cdol = Estimator(x, EstimatorConfig("cdol", queries=2400, subset=300)).curve(CLUSTER_SIGMAS)
    assert cdol.settings["C_used"] == 16.0
    err = np.abs(cdol.loss - full_curve.loss) / full_curve.data_variance
    assert err.max() < 0.02, err  # measured: at most 0.74% of the variance


def test_dol_is_biased_low_and_snis_high_at_small_sigma(clusters, full_curve):
    x, _ = clusters
    dol = Estimator(x, EstimatorConfig("dol", queries=2400, subset=300))
    # the source is always in DOL's subset with full weight: the posterior is too sharp, J* too low
    for i in (1, 2, 3):  # sigma 0.2 .. 0.7, J*/V from 0.1% to 7%: the transition
        lvl = dol.level(CLUSTER_SIGMAS[i])
        assert lvl.loss < full_curve.loss[i] - 3 * math.hypot(lvl.stderr, full_curve.stderr[i])
    # SNIS misses the source: near the spacing it averages over wrong neighbours, J* far too high
    snis = Estimator(x, EstimatorConfig("snis", queries=2400, subset=300)).level(CLUSTER_SIGMAS[1])
    assert snis.loss > 3 * full_curve.loss[1]


def test_shape_of_the_curve(clusters, full_curve):
    v = full_curve.data_variance
    assert full_curve.loss[0] < 1e-9 * v  # far below the nearest-neighbour spacing: memorised
    assert np.all(np.diff(full_curve.loss) > -3 * np.hypot(full_curve.stderr[1:], full_curve.stderr[:-1]))
    big = Estimator(clusters[0], EstimatorConfig("full", queries=1200)).level(1e3)
    assert big.loss == pytest.approx(v, rel=1e-4)  # J* -> V - tr(Cov^2) / (D sigma^2)


def test_class_conditional_against_quadrature():
    # Two classes of 1-D points: J*_cond = sum_c p(c) J*_c, each by quadrature within its class.
    a, b = np.array([-1.0, -0.6, 0.1]), np.array([0.0, 0.5, 1.4, 2.0])
    x = torch.tensor(np.concatenate([a, b])[:, None])
    labels = np.array([0] * 3 + [1] * 4)
    est = Estimator(x, EstimatorConfig("full", queries=7000), labels=labels, dtype=torch.float64)
    uncond = Estimator(x, EstimatorConfig("full", queries=7000), dtype=torch.float64)
    for s in (0.1, 0.3, 1.0, 3.0):
        want = 3 / 7 * optimal_loss_1d(a, s) + 4 / 7 * optimal_loss_1d(b, s)
        lvl = est.level(s, seed=0)
        _within(lvl, want)
        assert lvl.loss <= uncond.level(s, seed=0).loss + 3 * lvl.stderr
    curve = est.curve([0.3, 1.0])
    assert curve.data_variance == pytest.approx(3 / 7 * a.var() + 4 / 7 * b.var())
    assert curve.settings["class_conditional"] is True


def test_float32_agrees_with_float64(clusters):
    x, _ = clusters
    for estimator in ("full", "cdol"):
        cfg = EstimatorConfig(estimator, queries=128, subset=300)
        e32, e64 = Estimator(x, cfg), Estimator(x, cfg, dtype=torch.float64)
        for s in (0.05, 0.7, 1e3):
            a, b = e32.level(s, seed=3), e64.level(s, seed=3)  # the same noise: only round-off differs
            assert a.loss == pytest.approx(b.loss, rel=1e-5, abs=1e-7)


def test_memmap_rows_equal_tensor_rows(tmp_path, clusters):
    x, _ = clusters
    path = tmp_path / "x.npy"
    np.save(path, x.numpy())
    cfg = EstimatorConfig("full", queries=300, chunk_size=500)
    from_mm = Estimator(np.load(path, mmap_mode="r"), cfg).level(0.7, seed=2)
    from_tensor = Estimator(x, cfg).level(0.7, seed=2)
    assert from_mm.loss == pytest.approx(from_tensor.loss, rel=1e-6)


def test_levels_do_not_depend_on_the_grid_and_resume(clusters):
    x, _ = clusters
    est = Estimator(x, EstimatorConfig("full", queries=200))
    alone = est.level(0.7, seed=5)
    seen = []
    curve = est.curve([0.2, 0.7, 1.2], seed=5, done={0.2: alone}, on_level=seen.append)
    assert [e.sigma for e in seen] == [0.7, 1.2]  # 0.2 was given as done
    assert curve.loss[1] == alone.loss  # same (seed, sigma), same number
    assert curve.loss[0] == alone.loss  # the given level is used as is


def test_stratified_sources():
    idx = stratified_sources(7, 30, torch.Generator().manual_seed(0))
    counts = np.bincount(idx.numpy(), minlength=7)
    assert len(idx) == 30 and counts.min() == 4 and counts.max() == 5


def test_subset_standard_error_comes_from_many_blocks(clusters):
    x, _ = clusters
    lvl = Estimator(x, EstimatorConfig("cdol", queries=640, subset=300)).level(0.7)
    assert lvl.queries == 640  # 32 blocks of 20 queries, each block one random subset


@pytest.mark.parametrize("estimator", ["full", "cdol"])
def test_target_stderr_adds_rounds_until_met(clusters, full_curve, estimator):
    x, _ = clusters
    target = 0.002
    est = Estimator(x, EstimatorConfig(estimator, queries=256, subset=600, target_stderr=target))
    var = est.data_variance
    memorised, transition = est.level(0.05), est.level(1.2)
    assert memorised.queries == 256  # every query gives 0: one round is enough
    assert transition.queries > 256 and transition.queries % 256 == 0
    for lvl in (memorised, transition):
        assert lvl.stderr <= target * var
    ref = full_curve(1.2)
    se = math.hypot(transition.stderr, full_curve.stderr[CLUSTER_SIGMAS.index(1.2)])
    allowance = 0.0 if estimator == "full" else 0.01 * var  # cDOL's measured bias here is < 1% of V
    assert abs(transition.loss - ref) <= 4 * se + allowance


def test_target_stderr_respects_the_query_cap(clusters):
    x, _ = clusters
    cfg = EstimatorConfig("full", queries=64, target_stderr=4e-3, max_queries=192)  # needs ~350 queries
    assert Estimator(x, cfg).level(1.2).queries == 192


def test_an_unreachable_target_stops_early_and_says_so(clusters):
    """The projected need (MARGIN (sd / target)^2) far beyond the cap stops a level after 64 queries with one
    warning, instead of rounds up to the cap."""
    x, _ = clusters
    cfg = EstimatorConfig("full", queries=64, target_stderr=1e-9, max_queries=1 << 20)
    with pytest.warns(UserWarning, match="more than the cap of 1,048,576; stopped at 64 queries"):
        assert Estimator(x, cfg).level(1.2).queries == 64


def test_fixed_rounds_grow_geometrically(clusters, monkeypatch):
    """Rounds of `queries` become rounds as large as all before them after GEOMETRIC_AFTER rounds: a target
    that needs ~2,000 queries at --queries 2 takes about 8 + log2(2000 / 16) rounds, not ~1,000."""
    from lossfloor.floor import levels
    from lossfloor.floor.strategies import FullEstimator

    x, _ = clusters
    sizes, original = [], FullEstimator.round

    def spy(self, data, sigma, config, *args, **kwargs):
        sizes.append(config.queries)
        return original(self, data, sigma, config, *args, **kwargs)

    monkeypatch.setattr(FullEstimator, "round", spy)
    est = Estimator(x, EstimatorConfig("full", queries=2400), dtype=torch.float64)
    sd = est.level(1.2, seed=1).stderr * math.sqrt(2400)
    target = sd / math.sqrt(2000) / est.data.variance
    sizes.clear()
    level = Estimator(x, EstimatorConfig("full", queries=2, target_stderr=target)).level(1.2, seed=0)
    assert level.stderr <= target * est.data.variance * 1.5
    assert sizes[:levels.GEOMETRIC_AFTER] == [2] * levels.GEOMETRIC_AFTER
    assert all(b == sum(sizes[:i + 1]) for i, b in enumerate(sizes[1:]) if i + 1 >= levels.GEOMETRIC_AFTER)
    assert len(sizes) <= levels.GEOMETRIC_AFTER + 12


@pytest.mark.parametrize("kwargs, match", [
    ({"estimator": "nope"}, "unknown estimator"),
    ({"target_stderr": 0.0}, "target stderr"),
    ({"form": "nope"}, "unknown form"),
    ({"queries": 1}, "at least 2"),
    ({"subset": 1}, "at least 2"),
    ({"C": 0.5}, "C must be"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EstimatorConfig(**kwargs)


def test_input_errors():
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="exceeds"):
        Estimator(x, EstimatorConfig("cdol", subset=11))
    with pytest.raises(ValueError, match="at least 2 data points"):
        Estimator(x[:1])
    with pytest.raises(ValueError, match="labels"):
        Estimator(x, labels=np.zeros(9))
    with pytest.raises(ValueError, match="positive"):
        Estimator(x).level(0.0)
    with pytest.raises(ValueError, match="positive"):
        Estimator(x).curve([1.0, math.inf])


@pytest.mark.parametrize("kwargs, match", [
    ({"C": math.nan}, "C must be finite"),
    ({"C": math.inf}, "C must be finite"),
    ({"target_stderr": math.nan}, "target stderr"),
    ({"target_stderr": math.inf}, "target stderr"),
    ({"queries": 2.5}, "integer"),
    ({"batch_size": 0}, "batch_size"),
    ({"queries": 64, "max_queries": 32}, "max_queries"),
])
def test_config_rejects_non_finite_and_impossible_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EstimatorConfig(**kwargs)


def test_global_form_never_returns_negative_loss():
    # Data scaled x1000 at a tiny sigma: A - B cancels to a large negative number per query; the level
    # is clamped to 0 with a warning (the reproduction gave J* = -336).
    x = torch.tensor(POINTS[:, None]) * 1000
    est = Estimator(x, EstimatorConfig("full", queries=64, form="global"))
    with pytest.warns(UserWarning, match="clamped to 0"):
        level = est.level(1e-3, seed=0)  # 64 sources over 5 points: unequal counts
    assert level.loss == 0.0 and level.stderr > 0


@pytest.mark.parametrize("name", ["edm", "flow"])
def test_curve_for_total_reaches_the_target_and_the_truth(name):
    """The two-point dataset {-1, +1}, whose J* is exact: from a 6-level grid, levels and queries are added
    until the total's uncertainty is below the target, and the total agrees with the exact one."""
    obj = get_objective(name)
    dense = np.geomspace(0.002, 80, 257)
    truth = OptimalLossCurve(dense, two_point_optimal_loss(dense), np.zeros(257), 1.0, 2, 1).total(obj).value
    est = Estimator(torch.tensor([[-1.0], [1.0]]), EstimatorConfig("full", queries=64), dtype=torch.float64)
    target = 0.003 * truth
    saved = []
    curve = est.curve_for_total(obj, target, np.geomspace(0.002, 80, 6), seed=0, on_level=saved.append)
    total = curve.total(obj)
    assert total.stderr <= target
    assert len(curve.sigma) > 6 and max(curve.settings["queries_used"]) > 64  # levels and queries added
    assert abs(total.value - truth) <= 3 * total.stderr
    assert {e.sigma for e in saved} == set(curve.sigma)
    again = est.curve_for_total(obj, target, np.geomspace(0.002, 80, 6), seed=0,
                                done={e.sigma: e for e in saved})  # resume: same numbers
    np.testing.assert_array_equal(again.loss, curve.loss)


def test_min_queries_adapts_rounds_and_bounds_zero_levels(clusters, full_curve):
    """With min_queries, a memorised level stops after a small round with an upper bound as its stderr
    (not 0), and a transition level gets about the queries its spread needs, agreeing with the reference."""
    x, _ = clusters
    cfg = EstimatorConfig("full", queries=1024, target_stderr=0.003, min_queries=32)
    est = Estimator(x, cfg, dtype=torch.float64)
    tiny = est.level(0.02, seed=0)
    assert tiny.loss == 0.0 and 0 < tiny.stderr <= 0.003 * est.data_variance and tiny.queries == 32
    for s in (0.4, 1.2):
        level = est.level(s, seed=0)
        i = CLUSTER_SIGMAS.index(s)
        assert level.stderr <= 0.003 * est.data_variance
        assert abs(level.loss - full_curve.loss[i]) <= 3 * math.hypot(level.stderr, full_curve.stderr[i])


def test_zero_level_bound_is_above_the_truth():
    # The two-point dataset: the bound sum_n d^2 2 Phi(-d / 2 sigma) / D is 4 * 2 Phi(-1 / sigma) per source.
    from lossfloor.floor.bound import zero_level_bound
    from lossfloor.floor.matrix import DataMatrix
    data = DataMatrix(torch.tensor([[-1.0], [1.0]]), dtype=torch.float64)
    for s in (0.1, 0.2, 0.3, 0.5):
        bound = zero_level_bound(data, torch.tensor([0, 1]), s)
        assert two_point_optimal_loss(s) <= bound <= 4 * 2 * 0.5 * math.erfc(1 / s / math.sqrt(2)) * 1.0001


@pytest.mark.parametrize("sigma", [0.02, 0.05])
def test_pruning_equals_the_unpruned_estimate(clusters, sigma, monkeypatch):
    """Exact pruning skips points whose weight is provably < e^-(log N + 40) of the source's: the values
    equal the unpruned ones to float64 rounding (same queries, same generator).  The spy makes sure rows
    were in fact pruned (at larger sigma pruning keeps half the rows or more and does not apply)."""
    import lossfloor.floor.values as estimators_module

    x, _ = clusters
    kept, original = [], estimators_module._pruned_rows

    def spy(data, *args, **kwargs):
        rows = original(data, *args, **kwargs)
        kept.append(len(data.rows) if rows is None else len(rows))
        return rows

    monkeypatch.setattr(estimators_module, "_pruned_rows", spy)
    values = []
    for prune in (False, True):
        est = Estimator(x, EstimatorConfig("full", queries=600, prune=prune), dtype=torch.float64)
        values.append(est.level(sigma, seed=3))
    assert kept and min(kept) < len(x)
    assert values[1].queries == values[0].queries
    assert values[1].loss == pytest.approx(values[0].loss, rel=1e-9, abs=1e-15)
    assert values[1].stderr == pytest.approx(values[0].stderr, rel=1e-9, abs=1e-15)


def test_pruning_keeps_few_rows_at_small_sigma(clusters):
    from lossfloor.floor.kernel import Projection, candidate_rows
    x, _ = clusters
    x = x.double()
    proj = Projection.of(x, x.mean(0))
    noise = torch.randn(64, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    q = (x[:64] - x.mean(0)) + 0.05 * noise
    ref = (q - (x[:64] - x.mean(0))).pow(2).sum(1)
    rows = candidate_rows(q, ref, proj, 0.05)
    assert set(range(64)) <= set(rows.tolist()) and len(rows) < 0.2 * len(x)


def test_all_zero_level_with_a_loose_bound_stops_at_queries(clusters):
    # The bound does not shrink with more sources once its mean exceeds the target: stop at `queries`.
    x, _ = clusters
    cfg = EstimatorConfig("full", queries=128, target_stderr=1e-30, min_queries=32, max_queries=1 << 16)
    level = Estimator(x, cfg, dtype=torch.float64).level(0.05, seed=0)
    assert level.loss == 0.0 and level.queries == 128 and level.stderr > 0


def test_a_resumed_level_is_found_despite_the_last_bits_of_its_sigma(clusters):
    """A grid recomputed elsewhere (numpy's geomspace can differ in the last bits) still reuses the levels an
    earlier run saved: within SNAP_RTOL the saved level is the requested one, and nothing is recomputed."""
    from lossfloor.floor.estimator import snap_to_done

    x, _ = clusters
    est = Estimator(x, EstimatorConfig("full", queries=64))
    first = est.curve([0.5, 2.0])
    done = {float(s): LevelEstimate(float(s), float(v), float(e), 64)
            for s, v, e in zip(first.sigma, first.loss, first.stderr, strict=True)}
    nudged = [0.5 * (1 + 3e-16), 2.0 * (1 - 4e-16)]
    assert snap_to_done(nudged, done) == [0.5, 2.0]
    called = []
    est.level = lambda *a, **k: called.append(a)  # any recomputation would be recorded
    again = est.curve(nudged, done=done)
    assert not called and list(again.loss) == list(first.loss)
    assert snap_to_done([0.5 * (1 + 1e-6)], done) == [0.5 * (1 + 1e-6)]  # a different level stays different
