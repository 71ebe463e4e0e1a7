"""One likelihood yardstick for every target: the continuous-time VDM NELBO of an x0-denoiser.

Any model, whatever it was trained to predict, is first turned into an x0-denoiser D(x~, sigma) in
VE coordinates (x~ = x0 + sigma eps, see `formulation`).  Its negative ELBO (Kingma et al. 2021) is

    NELBO(x) = KL(q(x~_max | x) || prior)                          prior term, at sigma_max
             + E[-log N(x; x~_min, sigma_min^2 I)]                  reconstruction, at sigma_min
             + int_{sigma_min}^{sigma_max} E||x - D(x~, sigma)||^2 / sigma^2  d log sigma,

because -1/2 SNR'(t) dt = sigma^-2 d log sigma with SNR = 1/sigma^2: the bound depends on the process
only through its end points, so one estimator serves every process and target.  The prior is the VP
convention z_1 ~ N(0, I), i.e. x~ ~ N(0, (prior_variance + sigma_max^2) I).  The reconstruction uses
a Gaussian decoder centred on the noisy observation, which needs no model; as sigma_min -> 0 its
-D log sigma_min cancels the diffusion term's growth for a density with a smooth score.

The diffusion integral is estimated by stratified Monte Carlo over log sigma, independently for each
data point, so the standard error is the spread of the per-point estimates over sqrt(N).  Continuous
data get a density bound in nats (or bits) per dimension; quantised data (images) get the
dequantised bound: -log P(bin) <= E_u[NELBO(x + u)] - D log(step) with u uniform within the bin.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lossfloor.core.errors import InputError
from lossfloor.core.stats import Estimate
from lossfloor.nets.denoiser import x0_loss
from lossfloor.objective.objective import Objective
from lossfloor.objective.weights import nelbo_log_sigma_weight

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x~ of shape (N, ...), sigma of shape (N,)) -> x0_hat
LN2 = math.log(2.0)


@dataclass(frozen=True)
class NELBO:
    """A NELBO estimate per dimension with its terms (nats per dimension) and standard error."""

    bits_per_dim: float
    stderr: float  # of bits_per_dim
    nats_per_dim: float
    prior: float
    reconstruction: float
    diffusion: float
    dequantization: float  # -log(step) for quantised data, 0 for continuous data
    sigma_min: float
    sigma_max: float
    points: int
    samples: int  # log-sigma samples per point


def prior_kl(x: Tensor, sigma_max: float, prior_variance: float = 1.0) -> Tensor:
    """KL(N(x, sigma_max^2 I) || N(0, (prior_variance + sigma_max^2) I)) per point, summed over dims."""
    v = prior_variance + sigma_max**2
    x2 = x.reshape(len(x), -1).double().pow(2)
    return 0.5 * (x2 / v + sigma_max**2 / v - 1 - math.log(sigma_max**2 / v)).sum(1)


def reconstruction_nll(dim: int, sigma_min: float) -> float:
    """E[-log N(x; x~, sigma_min^2 I)] with x~ = x + sigma_min eps: the Gaussian decoder's term."""
    return 0.5 * dim * math.log(2 * math.pi * math.e * sigma_min**2)


def _per_point_diffusion(denoise: Denoiser, x: Tensor, log_lo: float, log_hi: float, samples: int,
                         generator: torch.Generator) -> Tensor:
    """Stratified MC of int ||x - D||^2 / sigma^2 d log sigma for each point (summed over dims)."""
    n = len(x)
    strata = (torch.arange(samples, dtype=torch.float64) + torch.rand(n, samples, generator=generator,
                                                                      dtype=torch.float64)) / samples
    log_sigma = log_lo + (log_hi - log_lo) * strata  # (n, samples)
    total = torch.zeros(n, dtype=torch.float64)
    dim = x[0].numel()
    for k in range(samples):
        sigma = torch.exp(log_sigma[:, k])
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.dtype)
        with torch.no_grad():
            err = x0_loss(denoise, x, sigma, eps) * dim
        total += err * nelbo_log_sigma_weight(sigma)
    return total * (log_hi - log_lo) / samples


def nelbo(denoise: Denoiser, x: Tensor, *, sigma_min: float = 1e-3, sigma_max: float = 1e3,
          samples: int = 16, prior_variance: float = 1.0, quantization_step: float | None = None,
          seed: int = 0, batch_size: int = 4096) -> NELBO:
    """The NELBO of the denoiser on data x (N, ...) per dimension, in nats and bits, with its SE.

    quantization_step: the spacing of the data's levels (2/255 for 8-bit images in [-1, 1]); the data
    are then dequantised with uniform noise and the bound is on the discrete probability.
    """
    if not 0 < sigma_min < sigma_max or not math.isfinite(sigma_max):
        raise InputError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
    if samples < 1 or len(x) < 2:
        raise InputError("need at least 1 log-sigma sample per point and 2 points")
    gen = torch.Generator().manual_seed(seed)
    dim = x[0].numel()
    values, prior_sum, diff_sum = [], 0.0, 0.0
    for batch in x.split(batch_size):
        if quantization_step is not None:
            u = torch.rand(batch.shape, generator=gen, dtype=torch.float64) - 0.5
            batch = batch + (quantization_step * u).to(batch.dtype)
        prior = prior_kl(batch, sigma_max, prior_variance)
        diff = _per_point_diffusion(denoise, batch, math.log(sigma_min), math.log(sigma_max), samples, gen)
        values.append(prior + diff)
        prior_sum += prior.sum().item()
        diff_sum += diff.sum().item()
    per_point = torch.cat(values)
    recon = reconstruction_nll(dim, sigma_min)
    deq = -dim * math.log(quantization_step) if quantization_step is not None else 0.0
    nats = (per_point.mean().item() + recon + deq) / dim
    se = per_point.std().item() / math.sqrt(len(per_point)) / dim
    n = len(per_point)
    return NELBO(bits_per_dim=nats / LN2, stderr=se / LN2, nats_per_dim=nats, prior=prior_sum / n / dim,
                 reconstruction=recon / dim, diffusion=diff_sum / n / dim, dequantization=deq / dim,
                 sigma_min=sigma_min, sigma_max=sigma_max, points=n, samples=samples)


@dataclass(frozen=True)
class ErrorCurve:
    """Per-dimension x0 error E||x - D(x~, sigma)||^2 / D at each sigma, with standard errors."""

    sigma: list[float]
    loss: list[float]
    stderr: list[float]


def x0_error_curve(denoise: Denoiser, x: Tensor, sigmas, *, seed: int = 0,
                   batch_size: int = 4096) -> ErrorCurve:
    """The model's x0 loss per dimension at each noise level (one noise draw per point and level)."""
    gen = torch.Generator().manual_seed(seed)
    levels = []
    for s in sigmas:
        errs = []
        for batch in x.split(batch_size):
            eps = torch.randn(batch.shape, generator=gen, dtype=torch.float64).to(batch.dtype)
            sigma = torch.full((len(batch),), float(s), dtype=torch.float64)
            with torch.no_grad():
                errs.append(x0_loss(denoise, batch, sigma, eps))
        levels.append(Estimate.of(torch.cat(errs)))
    return ErrorCurve([float(s) for s in sigmas], [e.value for e in levels], [e.stderr for e in levels])


def rescaled_loss(denoise: Denoiser, x: Tensor, objective: Objective, *, samples: int = 4, seed: int = 0,
                  batch_size: int = 4096) -> Estimate:
    """The seed's rescaled loss: E_{t ~ objective} ||x - x0_hat||^2 per dimension, with its SE."""
    gen = torch.Generator().manual_seed(seed)
    values = []
    for batch in x.split(batch_size):
        per_point = torch.zeros(len(batch), dtype=torch.float64)
        for _ in range(samples):
            sigma = objective.sample_sigma(len(batch), gen)
            eps = torch.randn(batch.shape, generator=gen, dtype=torch.float64).to(batch.dtype)
            with torch.no_grad():
                per_point += x0_loss(denoise, batch, sigma, eps)
        values.append(per_point / samples)
    return Estimate.of(torch.cat(values))
