"""The control-variate estimator of a level (`estimators.control_variate_level`): unbiased, with an honest
standard error, cheaper where the posterior spreads, and resumable from the CLI."""

import json
import math

import numpy as np
import pytest
import torch

from lossfloor.app.cli import main
from lossfloor.floor.config import EstimatorConfig, stratified_sources
from lossfloor.floor.estimator import Estimator
from lossfloor.floor.matrix import DataMatrix
from lossfloor.floor.values import _features, noisy


@pytest.fixture(scope="module")
def clusters():
    """24 clusters of std 0.6 in D = 8, N = 4000: at sigma >= 1 the posterior spreads over many points."""
    g = torch.Generator().manual_seed(0)
    centers = 1.5 * torch.randn(24, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(24, (4000,), generator=g)
    return centers[labels] + 0.6 * torch.randn(4000, 8, generator=g, dtype=torch.float64)


def _reference(x, sigma: float):
    """J*(sigma) by the plain full estimator with many queries (independent seed): (value, stderr)."""
    level = Estimator(x, EstimatorConfig("full", queries=16000), dtype=torch.float64).level(sigma, seed=99)
    return level.loss, level.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sigma", [1.5, 4.0])
def test_unbiased_with_an_honest_stderr(clusters, sigma):
    """Over 12 seeds the estimates scatter around the reference as their own stderrs say: the mean z is
    within 3 / sqrt(12) of 0 and the mean z^2 within what a chi-square with 12 degrees of freedom allows
    (99.9%: z^2 averaged below 2.7), where z = (estimate - reference) / combined stderr."""
    ref, ref_se = _reference(clusters, sigma)
    cfg = EstimatorConfig("full", queries=1024, target_stderr=0.004, min_queries=64, control_subset=200)
    est = Estimator(clusters, cfg, dtype=torch.float64)
    levels = [est.level(sigma, seed=s) for s in range(12)]
    assert all(e.control_queries > 0 for e in levels)  # the subset control variate was used
    assert all(e.stderr <= 0.004 * est.data_variance for e in levels)
    z = np.array([(e.loss - ref) / math.hypot(e.stderr, ref_se) for e in levels])
    assert abs(z.mean()) <= 3 / math.sqrt(len(z)), z
    assert (z**2).mean() <= 2.7, z


def test_cheaper_than_plain_rounds_where_the_posterior_spreads(clusters, monkeypatch):
    """At the same stderr target the control variate costs fewer full-query equivalents: each full query also
    evaluates the subset (1 + |S|/N) and each control query costs |S|/N, with |S| as chosen (a spy)."""
    import lossfloor.floor.control as estimators_module
    rows, original = [], estimators_module._control_values

    def spy(data, blocks, *args, **kwargs):
        rows.append(sum(len(b) for b in blocks))
        return original(data, blocks, *args, **kwargs)

    monkeypatch.setattr(estimators_module, "_control_values", spy)
    plain = EstimatorConfig("full", queries=1024, target_stderr=0.002, min_queries=64)
    cv = EstimatorConfig("full", queries=1024, target_stderr=0.002, min_queries=64, control_subset=200)
    a = Estimator(clusters, plain, dtype=torch.float64).level(4.0, seed=0)
    b = Estimator(clusters, cv, dtype=torch.float64).level(4.0, seed=0)
    assert b.control_queries > 0 and len(set(rows)) == 1
    share = rows[0] / len(clusters)
    cost = b.queries * (1 + share) + b.control_queries * share
    assert cost < 0.5 * a.queries, (a, b, rows[0])  # measured 0.35


def test_falls_back_to_plain_rounds_where_it_does_not_pay(clusters):
    """At small sigma a random subset misses a query's neighbours: no control queries, the pilot is used as a
    plain round, and the estimate equals the plain adaptive one drawn from the same generator stream."""
    cfg = EstimatorConfig("full", queries=1024, target_stderr=0.004, min_queries=64, control_subset=200)
    level = Estimator(clusters, cfg, dtype=torch.float64).level(0.05, seed=0)
    assert level.control_queries == 0 and level.loss == 0.0 and level.stderr > 0  # a zero level's bound


def test_features_have_mean_zero(clusters):
    """The free control features have known mean 0 under the queries' sampling (sources uniform over the
    data, eps ~ N(0, I)): each feature's mean over 20,000 queries is within 4 standard errors of 0."""
    data = DataMatrix(clusters, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    idx = stratified_sources(data.n, 20000, g)
    x_src = data.centered_rows(idx)
    _, eps = noisy(x_src, 0.7, g, with_noise=True)
    f = _features(x_src, eps, data)
    z = f.mean(0) / (f.std(0) / math.sqrt(len(f)))
    assert torch.all(z.abs() < 4), z


def test_config_needs_target_and_min_queries():
    with pytest.raises(ValueError, match="control_subset"):
        EstimatorConfig("full", control_subset=100)
    with pytest.raises(ValueError, match="control_subset"):
        EstimatorConfig("cdol", target_stderr=0.01, min_queries=32, control_subset=100)


@pytest.mark.slow
def test_cli_records_control_queries_and_resumes_to_the_same_numbers(tmp_path, clusters):
    path = tmp_path / "clusters.npy"
    np.save(path, clusters.numpy())
    args = ["estimate", "--no-progress", "--data", str(path), "--sigmas", "0.05,1.5,4", "--target-stderr",
            "0.004", "--min-queries", "64", "--control-subset", "200", "--queries", "512"]
    with pytest.raises(SystemExit) as info:
        main([*args, "--out", str(tmp_path / "a")])
    assert info.value.code == 0
    doc = json.loads((tmp_path / "a" / "optimal_loss.json").read_text())
    assert doc["settings"]["control_subset"] == 200 and doc["settings"]["control_queries_used"][2] > 0
    (tmp_path / "b").mkdir()  # an interrupted run: its partial file holds every level
    saved = (tmp_path / "a" / "optimal_loss.json").read_text()
    (tmp_path / "b" / "optimal_loss.partial.json").write_text(saved)
    with pytest.raises(SystemExit) as info:
        main([*args, "--out", str(tmp_path / "b"), "--resume"])
    assert info.value.code == 0
    resumed = json.loads((tmp_path / "b" / "optimal_loss.json").read_text())
    for key in ("loss", "stderr", "total", "total_stderr"):
        assert resumed[key] == doc[key]
    assert resumed["settings"]["control_queries_used"] == doc["settings"]["control_queries_used"]
