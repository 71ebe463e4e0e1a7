"""The NELBO estimator against closed forms, and its independence of the prediction target."""

import math

import pytest
import torch

from lossfloor.evaluate.likelihood import nelbo, rescaled_loss, x0_error_curve
from lossfloor.nets.denoiser import Denoiser
from lossfloor.objective.objective import get_objective
from lossfloor.objective.targets import prediction_from_x0


class ExactPrediction(Denoiser):
    """The library's Denoiser (VE input -> process time -> target -> x0) with the network replaced by an
    exact predictor predict(x_t, t) of the objective's target."""

    def __init__(self, predict, objective):
        super().__init__(torch.nn.Identity(), objective)
        self.predict = predict

    def prediction(self, x_t, t):
        return self.predict(x_t, self._times(t, len(x_t)))


def gaussian_denoiser(s2):
    """The exact posterior mean of N(0, s2 I) data: x0_hat = s2 / (s2 + sigma^2) x~."""
    def denoise(x_tilde, sigma):
        return (s2 / (s2 + sigma**2)).to(x_tilde.dtype)[:, None] * x_tilde
    return denoise


def gaussian_nelbo_per_dim(s2, sigma_min, sigma_max, prior_variance=1.0):
    """Closed-form E[NELBO]/D (nats) for N(0, s2 I) data and the exact denoiser."""
    v = prior_variance + sigma_max**2
    prior = 0.5 * (s2 / v + sigma_max**2 / v - 1 - math.log(sigma_max**2 / v))
    recon = 0.5 * math.log(2 * math.pi * math.e * sigma_min**2)
    # int J/sigma^2 dlog sigma with J = s2 sigma^2 / (s2 + sigma^2): 1/2 [log(u / (s2 + u))] over u = sigma^2
    diff = 0.5 * (math.log(sigma_max**2 / (s2 + sigma_max**2)) - math.log(sigma_min**2 / (s2 + sigma_min**2)))
    return prior + recon + diff


@pytest.mark.parametrize("sigma_max", [3.0, 1e3])
def test_gaussian_nelbo_matches_closed_form(sigma_max):
    s2, dim = 0.7, 3
    gen = torch.Generator().manual_seed(1)
    x = math.sqrt(s2) * torch.randn(4000, dim, generator=gen, dtype=torch.float64)
    est = nelbo(gaussian_denoiser(s2), x, sigma_min=1e-2, sigma_max=sigma_max, samples=8, seed=3)
    exact = gaussian_nelbo_per_dim(s2, 1e-2, sigma_max)
    assert est.stderr > 0
    assert abs(est.nats_per_dim - exact) < 4 * est.stderr * math.log(2)
    assert est.bits_per_dim == pytest.approx(est.nats_per_dim / math.log(2))
    parts = est.prior + est.reconstruction + est.diffusion + est.dequantization
    assert parts == pytest.approx(est.nats_per_dim)


def test_gaussian_nelbo_approaches_entropy():
    """With a wide sigma range the exact denoiser's bound is the entropy plus log(1 + smin^2 / s2) / 2."""
    s2 = 0.5
    x = math.sqrt(s2) * torch.randn(4000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    est = nelbo(gaussian_denoiser(s2), x, sigma_min=1e-3, sigma_max=1e4, samples=8)
    entropy = 0.5 * math.log(2 * math.pi * math.e * (s2 + 1e-6))
    assert abs(est.nats_per_dim - entropy) < 4 * est.stderr * math.log(2)


def test_dequantised_bits_add_log_step():
    s2, step = 0.6, 2 / 255
    x = math.sqrt(s2) * torch.randn(2000, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    est = nelbo(gaussian_denoiser(s2), x, sigma_min=1e-3, sigma_max=1e3, quantization_step=step, samples=8)
    assert est.dequantization == pytest.approx(-math.log(step))
    # uniform dequantisation adds step^2/12 to the data variance: still the Gaussian closed form
    exact = gaussian_nelbo_per_dim(s2 + step**2 / 12, 1e-3, 1e3) - math.log(step)
    assert abs(est.nats_per_dim - exact) < 4 * est.stderr * math.log(2)


@pytest.mark.parametrize("process", ["cosine", "vp", "flow", "edm"])
def test_nelbo_identical_across_targets(process):
    """The same x0 predictor, wrapped as x0 / eps / v / score / velocity / F predictions, has one NELBO."""
    s2 = 0.8
    x = math.sqrt(s2) * torch.randn(500, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    values = []
    for target in ("x0", "eps", "v", "score", "velocity", "F"):
        obj = get_objective(f"{process}-{target}-simple")

        def predict(x_t, t, obj=obj):
            x_tilde = x_t / obj.process.alpha(t)[:, None]
            x0_hat = gaussian_denoiser(s2)(x_tilde, obj.process.ve_sigma(t))
            return prediction_from_x0(obj.target, obj.process, t, x_t, x0_hat, obj.precond)

        est = nelbo(ExactPrediction(predict, obj), x, sigma_min=1e-2, sigma_max=1e2, samples=4)
        values.append(est.nats_per_dim)
    assert max(values) - min(values) < 1e-6 * abs(values[0])


def test_cosine_nelbo_weights_are_the_vdm_weights():
    """lambda_x0 = -1/2 SNR'(t) = (pi/2) alpha / sigma^3 for cosine with t ~ U(0, 1), and the target forms."""
    t = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    a, s = torch.cos(math.pi * t / 2), torch.sin(math.pi * t / 2)
    half_pi = math.pi / 2
    expected = {"x0": half_pi * a / s**3, "eps": half_pi / (a * s), "v": half_pi * a / s,
                "score": half_pi * s / a}
    for target, w in expected.items():
        obj = get_objective(f"cosine-{target}-nelbo")
        torch.testing.assert_close(obj.target_weight(t), w, rtol=1e-9, atol=0)
    # and numerically: -1/2 dSNR/dt by finite differences
    snr = lambda u: (torch.cos(math.pi * u / 2) / torch.sin(math.pi * u / 2)) ** 2  # noqa: E731
    h = 1e-6
    fd = -0.5 * (snr(t + h) - snr(t - h)) / (2 * h)
    obj = get_objective("cosine-x0-nelbo")
    torch.testing.assert_close(obj.x0_weight(obj.process.ve_sigma(t)), fd, rtol=1e-5, atol=0)


def test_error_curve_and_rescaled_loss_of_gaussian_denoiser():
    s2 = 0.5
    x = math.sqrt(s2) * torch.randn(20000, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    den = gaussian_denoiser(s2)
    curve = x0_error_curve(den, x, [0.1, 1.0, 10.0], seed=1)
    for s, loss, se in zip(curve.sigma, curve.loss, curve.stderr, strict=True):
        assert abs(loss - s2 * s**2 / (s2 + s**2)) < 4 * se
    obj = get_objective("cosine-x0-simple")
    rescaled = rescaled_loss(den, x, obj, samples=2)
    value, se = rescaled.value, rescaled.stderr
    # E_t J(sigma(t)) with sigma = tan(pi t / 2): quadrature on a fine grid
    t = (torch.arange(200000, dtype=torch.float64) + 0.5) / 200000
    sig2 = torch.tan(math.pi * t / 2) ** 2
    exact = (s2 * sig2 / (s2 + sig2)).mean().item()
    assert abs(value - exact) < 4 * se


def test_nelbo_rejects_bad_range():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError):
        nelbo(gaussian_denoiser(1.0), x, sigma_min=1.0, sigma_max=0.5)
