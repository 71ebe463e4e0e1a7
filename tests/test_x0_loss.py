"""The one x0-loss function: its value by hand, and the same number from training's target-space error."""

import pytest
import torch

from lossfloor.formulation import PRESETS, get_objective, make_target
from lossfloor.models import Denoiser, ModelConfig, build_model, x0_loss, x0_loss_from_target


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
    """x0_loss of the Denoiser at sigma(t) = x0_loss_from_target of its error on the objective's target."""
    obj = get_objective(name)
    torch.manual_seed(0)
    den = Denoiser(build_model(ModelConfig("mlp", (2,), 16, 1)), obj).eval()
    gen = torch.Generator().manual_seed(1)
    t = obj.sample_t(64, gen)
    sigma = obj.process.ve_sigma(t)
    keep = (sigma > 1e-2) & (sigma < 1e2)  # away from the ends, where float32 conversions lose digits
    t, sigma = t[keep], sigma[keep]
    x0, eps = torch.randn(len(t), 2, generator=gen), torch.randn(len(t), 2, generator=gen)
    x_t = obj.process.alpha(t)[:, None] * x0.double() + obj.process.sigma(t)[:, None] * eps.double()
    target = make_target(obj.target, obj.process, t, x_t, x0.double(), obj.precond)
    with torch.no_grad():
        err = (den.prediction(x_t.float(), t).double() - target).pow(2).mean(1)
        direct = x0_loss(den, x0, sigma, eps)
    torch.testing.assert_close(x0_loss_from_target(obj, t, err), direct, rtol=2e-3, atol=1e-6)
