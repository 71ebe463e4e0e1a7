"""Sample metrics on Gaussians with closed-form distances; tolerances from the sampling error."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from lossfloor.evaluate.metrics import (
    classifier_accuracy,
    covariance_distance,
    energy_distance,
    frechet_distance,
    mean_distance,
    point_metrics,
    sliced_wasserstein,
    train_classifier,
)

N = 20000
MU = np.array([1.0, 0.5])
COV_B = np.diag([4.0, 1.0])


def gaussians(seed=0, n=N, mu=MU, cov_b=COV_B):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, 2))
    b = mu + rng.standard_normal((n, 2)) @ np.linalg.cholesky(cov_b).T
    return a, b


def test_mean_distance():
    a, b = gaussians()
    exact = np.linalg.norm(MU)
    cov_diff = (np.eye(2) + COV_B) / N  # covariance of the difference of sample means
    u = MU / exact
    se = math.sqrt(u @ cov_diff @ u)
    bias = (np.trace(cov_diff) - u @ cov_diff @ u) / (2 * exact)  # the norm's orthogonal inflation
    assert abs(mean_distance(a, b) - exact) < 4 * se + bias


def test_covariance_distance():
    a, b = gaussians(1)
    exact = np.linalg.norm(np.eye(2) - COV_B)  # = 3
    # Var(S_ij) = (Sigma_ij^2 + Sigma_ii Sigma_jj) / (n - 1) for Gaussian data
    var = sum((c**2 + np.outer(np.diag(c), np.diag(c))).sum() / (N - 1) for c in (np.eye(2), COV_B))
    assert abs(covariance_distance(a, b) - exact) < 4 * math.sqrt(var)


def exact_sliced_w2(mu, cov_a, cov_b, grid=100000):
    """SW_2 between Gaussians: the mean over directions of the 1-D Gaussian W_2^2, square-rooted."""
    th = (np.arange(grid) + 0.5) / grid * np.pi
    u = np.stack([np.cos(th), np.sin(th)], 1)
    sa = np.sqrt(np.einsum("ni,ij,nj->n", u, cov_a, u))
    sb = np.sqrt(np.einsum("ni,ij,nj->n", u, cov_b, u))
    return math.sqrt(np.mean((u @ mu) ** 2 + (sa - sb) ** 2))


def test_sliced_wasserstein():
    a, b = gaussians(2, n=4000)
    est = sliced_wasserstein(a, b, projections=300, seed=0)
    exact = exact_sliced_w2(MU, np.eye(2), COV_B)
    # projection noise is reported; each projection's sampling noise of W_2 is about sqrt((var_a + var_b) / n)
    sample_se = math.sqrt((1 + 4) / len(a))
    assert est.stderr > 0
    assert abs(est.value - exact) < 4 * math.hypot(est.stderr, sample_se)


def test_energy_distance_closed_form():
    a, b = gaussians(3, cov_b=np.eye(2))
    est = energy_distance(a, b, blocks=10, max_points=2000)
    # X - Y ~ N(mu, 2I): its norm is Rice(|mu| / sqrt 2, scale sqrt 2); X - X' has the Rayleigh mean sqrt(pi)
    cross = stats.rice(np.linalg.norm(MU) / math.sqrt(2), scale=math.sqrt(2)).mean()
    exact = 2 * cross - 2 * math.sqrt(math.pi)
    assert abs(est.value - exact) < 4 * est.stderr


def test_energy_distance_of_one_distribution_is_zero():
    a, _ = gaussians(4)
    b, _ = gaussians(5)
    est = energy_distance(a, b)
    assert abs(est.value) < 4 * est.stderr


class Identity(nn.Module):
    num_features = 2

    def forward(self, x):
        return x


def test_frechet_distance_closed_form():
    cov_b = 4 * np.eye(2)
    a, b = gaussians(6, cov_b=cov_b)
    fd = frechet_distance(Identity(), torch.from_numpy(a), torch.from_numpy(b))
    # the plumbing: exactly the Gaussian formula on the sample moments
    ma, mb, ca, cb = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(ca @ cb)
    moments = np.sum((ma - mb) ** 2) + np.trace(ca + cb) - 2 * np.sqrt(eig).real.sum()
    assert fd == pytest.approx(moments, rel=1e-6)
    # the population value |mu|^2 + sum (1 - 2)^2 with its sampling error (means, then per-dim stds)
    exact = MU @ MU + 2.0
    var = 4 * MU @ ((np.eye(2) + cov_b) / N) @ MU + 2 * 4 * 1.0 * (1 + 4) / (2 * N)
    bias = np.trace(np.eye(2) + cov_b) / N
    assert abs(fd - exact) < 4 * math.sqrt(var) + bias


def test_point_metrics_fields():
    a, b = gaussians(7, n=3000)
    m = point_metrics(a, b)
    assert m.mean_distance == pytest.approx(mean_distance(a, b))
    assert set(m.to_dict()) >= {"sliced_wasserstein", "energy_distance_se"}


def test_feature_classifier_learns_digits():
    from lossfloor.data.load import load_dataset

    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    net = train_classifier(train.x, train.labels, steps=150, batch_size=64, seed=0)
    assert net(test.x[:5]).shape == (5, net.num_features)
    # chance is 0.1; a few hundred steps of a small CNN already separates most digits
    assert classifier_accuracy(net, test.x, test.labels) > 0.7
