"""The one x0-loss function: its value by hand, and the same number from training's target-space error."""

import pytest
import torch

from lossfloor.nets.denoiser import Denoiser, x0_loss
from lossfloor.nets.networks import ModelConfig, build_model
from lossfloor.objective.loss import x0_loss_from_target
from lossfloor.objective.objective import PRESETS, get_objective
from lossfloor.objective.targets import make_target


def shrink(x_tilde, sigma):
    """The Gaussian N(0, I) posterior mean x~ / (1 + sigma^2), for a float or per-sample sigma."""
    sigma = torch.as_tensor(sigma, dtype=x_tilde.dtype).reshape(-1, *([1] * (x_tilde.dim() - 1)))
    return x_tilde / (1 + sigma**2)


@pytest.mark.parametrize("sigma", [0.3, torch.tensor([0.1, 1.0, 10.0, 0.5], dtype=torch.float64)])
def test_x0_loss_by_hand(sigma):
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 2, generator=gen), torch.randn(4, 3, 2, generator=gen)
    s = torch.as_tensor(sigma, dtype=torch.float64).expand(4).reshape(4, 1, 1)
    x0_hat = (x0.double() + s * eps.double()) / (1 + s**2)
    expected = (x0_hat - x0.double()).pow(2).mean((1, 2))
    got = x0_loss(shrink, x0, sigma, eps)
    assert got.dtype == torch.float64 and got.shape == (4,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_training_and_evaluation_see_the_same_x0_loss(name):
    """x0_loss of the Denoiser at sigma(t) = x0_loss_from_target of its error on the objective's target.

    In float64 throughout (network included), so the two paths differ only by rounding: a few float64
    operations on numbers of size |x~|, |x0|, |x0_hat| against an error of size rms(x0_hat - x0), doubled
    by the square: rtol_i = 16 eps kappa_i, kappa_i = (|x~|_max + |x0|_max + |x0_hat|_max) / rms error
    (the largest observed ratio to eps kappa is ~4).  Every sampled t is kept, the ends of the range too."""
    obj = get_objective(name)
    torch.manual_seed(0)
    den = Denoiser(build_model(ModelConfig("mlp", (2,), 16, 1)), obj).eval().double()
    gen = torch.Generator().manual_seed(1)
    t = obj.sample_t(64, gen)
    sigma = obj.process.ve_sigma(t)
    x0 = torch.randn(len(t), 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(len(t), 2, generator=gen, dtype=torch.float64)
    x_t = obj.process.alpha(t)[:, None] * x0 + obj.process.sigma(t)[:, None] * eps
    target = make_target(obj.target, obj.process, t, x_t, x0, obj.precond)
    with torch.no_grad():
        err = (den.prediction(x_t, t) - target).pow(2).mean(1)
        direct = x0_loss(den, x0, sigma, eps)
        x_tilde = x0 + sigma[:, None] * eps
        x0_hat = den(x_tilde, sigma)
    kappa = (x_tilde.abs().amax(1) + x0.abs().amax(1) + x0_hat.abs().amax(1)) / direct.sqrt()
    rtol = 16 * torch.finfo(torch.float64).eps * kappa
    assert torch.all((x0_loss_from_target(obj, t, err) - direct).abs() <= rtol * direct)
