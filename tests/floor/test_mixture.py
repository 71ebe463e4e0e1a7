"""The floor of a Gaussian mixture (stochastic latents, floor/mixture.py) against truths: a single Gaussian in
closed form, a 1-D mixture by quadrature, s = 0 against the point estimator, and the point estimator on K
sampled latents per component converging to the mixture as K grows.  Tolerances come from the reported
standard errors (or float rounding where the value is deterministic)."""

import math

import numpy as np
import pytest
import torch

from lossfloor.core.errors import InputError
from lossfloor.floor.config import EstimatorConfig
from lossfloor.floor.estimator import Estimator
from lossfloor.floor.mixture import (
    MixtureStats,
    mixture_coefficients,
    mixture_posterior_stats,
    reference_weight,
)


def _single(std_row, sigma, dtype=torch.float32):
    """Two identical components (the estimator needs N >= 2): the posterior is one Gaussian."""
    mu = torch.zeros(2, len(std_row))
    est = Estimator(mu, EstimatorConfig(queries=64), std=std_row.repeat(2, 1), dtype=dtype)
    return est.level(sigma)


@pytest.mark.parametrize("std", [[0.3] * 4, [0.05, 0.3, 1.0, 2.5]], ids=["isotropic", "diagonal"])
@pytest.mark.parametrize("sigma", [0.02, 0.3, 4.0])
def test_single_gaussian_closed_form(std, sigma):
    # Var(x0 | x~) = sigma^2 s^2 / (s^2 + sigma^2) per dimension whatever x~: every query gives that value.
    s = torch.tensor(std)
    exact = (sigma**2 * s.double() ** 2 / (s.double() ** 2 + sigma**2)).mean().item()
    est = _single(s, sigma)
    assert est.loss == pytest.approx(exact, rel=2e-6)
    assert est.stderr <= 1e-5 * exact  # float32 rounding only
    assert _single(s, sigma, torch.float64).loss == pytest.approx(exact, rel=1e-12)


def _quadrature_floor(mu, std, sigma):
    """J*(sigma) of an equal-weight 1-D Gaussian mixture by the trapezoidal rule over x~."""
    x = np.linspace(-12, 12, 400_001)
    v = std**2 + sigma**2
    comp = np.exp(-0.5 * (x[None] - mu[:, None]) ** 2 / v[:, None]) / np.sqrt(2 * np.pi * v[:, None])
    comp /= len(mu)
    p = comp.sum(0)
    post = comp / p
    b = std**2 / v
    mean_n = mu[:, None] + b[:, None] * (x[None] - mu[:, None])
    var = (post * (mean_n**2 + (sigma**2 * b)[:, None])).sum(0) - (post * mean_n).sum(0) ** 2
    return float(np.trapezoid(p * var, x))


@pytest.mark.parametrize("sigma", [0.1, 0.4, 1.0])
def test_1d_mixture_matches_quadrature(sigma):
    mu, std = np.array([-1.0, 0.3, 1.5]), np.array([0.2, 0.5, 0.05])
    est = Estimator(torch.tensor(mu)[:, None].float(), EstimatorConfig(queries=8192),
                    std=torch.tensor(std)[:, None].float()).level(sigma)
    assert abs(est.loss - _quadrature_floor(mu, std, sigma)) < 4 * est.stderr
    assert est.stderr < 0.01 * est.loss  # the check is tight


@pytest.mark.parametrize("sigma", [0.05, 0.5, 2.0])
def test_zero_std_is_the_point_estimator(sigma):
    # s = 0: the same queries as the point estimator, so the values agree to float rounding.
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    config = EstimatorConfig(queries=256)
    point = Estimator(x, config).level(sigma)
    mixture = Estimator(x, config, std=torch.zeros_like(x)).level(sigma)
    variance = Estimator(x, config).data_variance
    assert abs(mixture.loss - point.loss) < 1e-6 * variance
    assert mixture.stderr == pytest.approx(point.stderr, rel=1e-3, abs=1e-6 * variance)


def test_sampled_latents_converge_to_the_mixture():
    # The point floor of K latents drawn per component approaches the mixture's as K grows (from below: a
    # finite sample is memorised at small sigma).
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(6, 2, generator=g) * 2
    std = torch.rand(6, 2, generator=g) * 0.6 + 0.2
    config, sigma = EstimatorConfig(queries=4096), 1.0
    mixture = Estimator(mu, config, std=std).level(sigma)
    gaps = []
    for k in (1, 16, 256):
        z = (mu[:, None] + std[:, None] * torch.randn(6, k, 2, generator=g)).reshape(-1, 2)
        point = Estimator(z, config).level(sigma)
        gaps.append((point.loss - mixture.loss) / math.hypot(point.stderr, mixture.stderr))
    assert gaps[0] < -10  # the means alone are far from the mixture
    assert abs(gaps[2]) < 4 and abs(gaps[2]) < abs(gaps[1]) < abs(gaps[0])


def test_large_sigma_limit_is_the_mixture_variance():
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(2))
    std = torch.full_like(x, 0.7)
    est = Estimator(x, EstimatorConfig(queries=512), std=std)
    assert est.data_variance == pytest.approx(Estimator(x).data_variance + 0.49, rel=1e-7)
    level = est.level(1e4)
    assert abs(level.loss - est.data_variance) < 4 * level.stderr + 1e-4 * est.data_variance


def test_stats_merge_is_associative_over_chunks():
    g = torch.Generator().manual_seed(3)
    mu, std = torch.randn(37, 5, generator=g, dtype=torch.float64), torch.rand(37, 5, generator=g,
                                                                              dtype=torch.float64)
    q = torch.randn(11, 5, generator=g, dtype=torch.float64)
    whole = mixture_posterior_stats(q, mu, std, 0.3, chunk_size=64)
    parts = mixture_posterior_stats(q, mu, std, 0.3, chunk_size=5)
    beta = reference_weight(std, 0.3)
    split = mixture_posterior_stats(q, mu[:20], std[:20], 0.3, beta=beta).merge(
        mixture_posterior_stats(q, mu[20:], std[20:], 0.3, beta=beta))
    for other in (parts, split):
        assert isinstance(other, MixtureStats)
        torch.testing.assert_close(other.mean(), whole.mean(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(other.variance(), whole.variance(), rtol=1e-10, atol=1e-12)
    # Against the direct formula, component by component.
    v = std[None] ** 2 + 0.09
    log_p = (-0.5 * (q[:, None] - mu[None]) ** 2 / v - 0.5 * torch.log(v)).sum(2)
    post = torch.softmax(log_p, 1)
    m = mu[None] + std[None] ** 2 / v * (q[:, None] - mu[None])
    second = (post[..., None] * (m**2 + 0.09 * std[None] ** 2 / v)).sum((1, 2))
    mean = (post[..., None] * m).sum(1)
    torch.testing.assert_close(whole.mean(), mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(whole.variance(), second - mean.pow(2).sum(1), rtol=1e-8, atol=1e-10)


def test_class_conditional_mixture_is_the_weighted_class_floors():
    g = torch.Generator().manual_seed(4)
    x, std = torch.randn(40, 3, generator=g), torch.rand(40, 3, generator=g)
    labels = np.repeat([0, 1], [10, 30])
    config = EstimatorConfig(queries=400)
    est = Estimator(x, config, labels=labels, std=std)
    parts = [Estimator(x[:10], std=std[:10]), Estimator(x[10:], std=std[10:])]
    assert est.data_variance == pytest.approx(0.25 * parts[0].data_variance + 0.75 * parts[1].data_variance)
    level = est.level(0.5)
    assert 0 < level.loss < est.data_variance and level.stderr > 0


@pytest.mark.parametrize("config, words", [
    (EstimatorConfig(estimator="cdol", queries=64, subset=8), "subset estimators"),
    (EstimatorConfig(queries=64, prune=True), "pruning"),
])
def test_unsupported_settings_are_refused_in_one_line(config, words):
    x = torch.randn(20, 2)
    with pytest.raises(InputError, match=words) as err:
        Estimator(x, config, std=torch.ones_like(x))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("sigma", [1e-3, 0.1, 1.0, 1e4])
def test_float32_agrees_with_float64_from_small_to_large_sigma(sigma):
    # The reference r = beta x~ keeps float32 cancellation small where sigma << s and where sigma >> data.
    g = torch.Generator().manual_seed(5)
    x, std = torch.randn(300, 16, generator=g), torch.rand(300, 16, generator=g) * 0.1 + 0.01
    config = EstimatorConfig(queries=128)
    single = Estimator(x, config, std=std).level(sigma)
    double = Estimator(x, config, std=std, dtype=torch.float64).level(sigma)
    assert single.loss == pytest.approx(double.loss, rel=2e-5)


def test_cached_coefficients_give_the_same_sums():
    g = torch.Generator().manual_seed(6)
    mu, std = torch.randn(50, 7, generator=g), torch.rand(50, 7, generator=g)
    q = torch.randn(9, 7, generator=g)
    beta = reference_weight(std, 0.2)
    cached = mixture_coefficients(mu, std, 0.2, beta, torch.float32, q.device, chunk_size=16)
    a = mixture_posterior_stats(q, mu, std, 0.2, beta=beta, chunk_size=16, coefficients=cached)
    b = mixture_posterior_stats(q, mu, std, 0.2, chunk_size=16)
    torch.testing.assert_close(a.variance(), b.variance(), rtol=0, atol=0)
    torch.testing.assert_close(a.mean(), b.mean(), rtol=0, atol=0)
