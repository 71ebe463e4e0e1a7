"""The floor-referenced validator: fixed draws (identical numbers per seed), the optimal denoiser at zero
gap, paired differences whose intervals cover a known difference, and the epsilon/v/flow adapters."""

import math

import numpy as np
import pytest
import torch

from lossfloor.evaluate.adapters import eps_denoiser, flow_denoiser, v_denoiser
from lossfloor.evaluate.posterior import posterior_moments
from lossfloor.evaluate.validation import FloorValidator, grid_weights
from lossfloor.floor.config import EstimatorConfig
from lossfloor.floor.estimator import Estimator
from lossfloor.objective.objective import get_objective
from lossfloor.objective.targets import prediction_from_x0

SIGMAS = np.geomspace(0.05, 5.0, 6)


@pytest.fixture(scope="module")
def toy():
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 0.5, 0.3, 0.1])
    curve = Estimator(x.double(), EstimatorConfig(queries=300)).curve(SIGMAS, seed=0, progress=False)
    return x, curve


def shrink(a: float):
    """x0_hat = a x~ / (1 + sigma^2): its loss is (c - 1)^2 E||x0||^2 + c^2 sigma^2 D, c = a/(1+s^2)."""
    def denoise(x, sigma):
        return a * x / (1 + sigma.reshape(-1, 1) ** 2)
    return denoise


def shrink_loss(a: float, x: torch.Tensor, sigma) -> np.ndarray:
    c = a / (1 + np.asarray(sigma) ** 2)
    m2 = x.double().pow(2).sum(1).mean().item()
    return ((c - 1) ** 2 * m2 + c**2 * np.asarray(sigma) ** 2 * x.shape[1]) / x.shape[1]


def test_same_seed_same_numbers_and_flat_scalars(toy):
    x, curve = toy
    edm = get_objective("edm")
    a, b = FloorValidator(x, curve, edm, points=64, seed=3), FloorValidator(x, curve, edm, points=64, seed=3)
    r1, r2 = a(shrink(1.0)), b(shrink(1.0))
    assert r1.key == r2.key and r1.excess == r2.excess and np.array_equal(r1.gap, r2.gap)
    assert a(shrink(1.0)).excess == r1.excess
    assert FloorValidator(x, curve, edm, points=64, seed=4)(shrink(1.0)).excess != r1.excess
    flat = r1.scalars()
    assert all(isinstance(v, float) for v in flat.values()) and "floor/excess" in flat
    assert len(flat) == 2 + 3 * len(SIGMAS)


def test_the_optimal_denoiser_has_zero_gap(toy):
    x, curve = toy
    val = FloorValidator(x, curve, get_objective("edm"), points=64, seed=0)

    def optimal(noisy, sigma):
        return posterior_moments(x, noisy, float(sigma[0]), torch.zeros_like(noisy))["mean"].float()

    r = val(optimal)
    assert np.all(np.abs(r.gap) < 1e-5) and abs(r.excess) < 1e-4
    assert np.all(r.loss > 0)


def test_raw_mode_agrees_with_the_same_draw_gap(toy):
    x, curve = toy
    edm = get_objective("edm")
    same = FloorValidator(x, curve, edm, points=300, seed=1)(shrink(0.9))
    raw = FloorValidator(x, curve, edm, points=300, seed=1, same_draw=False)(shrink(0.9))
    assert np.all(same.gap >= 0) and np.all(same.gap_stderr <= raw.gap_stderr)
    assert np.all(np.abs(same.gap - raw.gap) < 4 * np.hypot(same.gap_stderr, raw.gap_stderr))


def test_paired_difference_covers_the_known_difference(toy):
    """A - B on identical draws has E = E||A - x0||^2 - E||B - x0||^2 (cross terms vanish given x~), known in
    closed form for shrinkage denoisers; its 95% intervals cover it at about the nominal rate."""
    x, curve = toy
    edm = get_objective("edm")
    w, coverage = grid_weights(edm, SIGMAS)
    assert 0.9 < coverage < 1
    truth = shrink_loss(1.0, x, SIGMAS) - shrink_loss(0.8, x, SIGMAS)
    hits, level_hits, z = 0, 0, []
    seeds = 60
    for seed in range(seeds):
        val = FloorValidator(x, curve, edm, points=48, seed=seed)
        d = val(shrink(1.0)).minus(val(shrink(0.8)))
        z.append((d.excess - w @ truth) / d.excess_stderr)
        hits += abs(z[-1]) <= 1.96
        level_hits += abs(d.gap[3] - truth[3]) <= 1.96 * d.gap_stderr[3]
    assert hits >= 0.85 * seeds and level_hits >= 0.85 * seeds
    assert abs(np.mean(z)) < 4 / math.sqrt(seeds)  # unbiased


@pytest.mark.parametrize("name, adapter", [("ddpm", eps_denoiser), ("cosine", v_denoiser),
                                            ("flow", flow_denoiser)])
def test_adapters_invert_the_targets(name, adapter):
    """A network that predicts the target implied by a known x0-denoiser gives back that denoiser."""
    obj = get_objective(name)
    target = {eps_denoiser: "eps", v_denoiser: "v", flow_denoiser: "velocity"}[adapter]
    spec = obj.with_(target=target)
    x0_of = shrink(0.7)

    def net(x_t, t):
        alpha = spec.process.alpha(t.double()).float().reshape(-1, 1)
        sigma = spec.process.ve_sigma(t.double())
        return prediction_from_x0(target, spec.process, t.double(), x_t, x0_of(x_t / alpha, sigma.float()))

    noisy = torch.randn(5, 3)
    sigma = torch.full((5,), 0.8)
    got = adapter(net, obj)(noisy, sigma)
    assert torch.allclose(got.float(), x0_of(noisy, sigma), atol=1e-4)
