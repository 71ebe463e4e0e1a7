"""One sampler for every objective, working on the x0-denoiser D(x~, sigma) in VE coordinates.

The probability-flow ODE is dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, Alg. 1): `heun`
integrates it with Heun's method; `euler_maruyama` integrates the reverse SDE
dx = 2 (x - D) / sigma dsigma + sqrt(2 sigma |dsigma|) z.  Both walk down a sigma grid and end with one
denoising step to sigma = 0.  Whatever the training process, its samples live at alpha = 1 (VE), so
every objective's denoiser is sampled the same way.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lossfloor.core.errors import InputError
from lossfloor.core.registry import Registry
from lossfloor.objective.objective import get_objective
from lossfloor.objective.targets import prediction_from_x0


def heun_step(denoiser, x: Tensor, s: float, s_next: float, d: Tensor, noise) -> Tensor:
    """One Heun step of the probability-flow ODE from sigma = s to s_next > 0 (d = dx/dsigma at s)."""
    x_next = x + (s_next - s) * d
    d_next = (x_next - denoiser(x_next, s_next)) / s_next
    return x + (s_next - s) * 0.5 * (d + d_next)


def euler_maruyama_step(denoiser, x: Tensor, s: float, s_next: float, d: Tensor, noise) -> Tensor:
    """One Euler-Maruyama step of the reverse SDE from sigma = s to s_next > 0 (`noise()` draws z)."""
    return x + 2 * (s_next - s) * d + (2 * s * (s - s_next)) ** 0.5 * noise()


SAMPLERS = Registry("sampler")
"""Sampler name -> step(denoiser, x, s, s_next, d, noise) from sigma = s to s_next > 0 (`sample` walks the
grid and ends with one denoising step to sigma = 0)."""
SAMPLERS.add("heun", heun_step, "probability-flow ODE, Heun's method (deterministic)")
SAMPLERS.add("euler_maruyama", euler_maruyama_step, "reverse SDE, Euler-Maruyama (stochastic)")


def karras_sigmas(steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  rho: float = 7.0) -> Tensor:
    """EDM's noise levels sigma_max -> sigma_min, uniform in sigma^(1/rho), followed by 0."""
    if steps < 2:
        raise InputError(f"need at least 2 sampling steps, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise InputError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    inv = sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    return torch.cat([inv**rho, torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def sample(denoiser, shape, sigmas: Tensor | None = None, *, method: str = "heun",
           generator: torch.Generator | None = None, device="cpu", progress: bool = False) -> Tensor:
    """Draw samples of `shape` = (n, *data_shape) from x ~ N(0, sigma_max^2 I) down the grid `sigmas`."""
    step = SAMPLERS.require(method)
    sigmas = karras_sigmas() if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float64)
    noise = lambda: torch.randn(shape, generator=generator).to(device)  # noqa: E731 (CPU draws: device-independent)
    x = noise() * float(sigmas[0])
    steps = list(zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True))
    for s, s_next in tqdm(steps, disable=not progress, desc="sample", unit="step"):
        d = (x - denoiser(x, s)) / s
        if s_next == 0:  # the last step lands on the denoised estimate
            x = x - s * d
        else:
            x = step(denoiser, x, s, s_next, d, noise)
    return x


@torch.no_grad()
def seed_native_sample(denoiser, target: str, shape, steps: int, generator: torch.Generator, *,
                       clamp: bool = False) -> torch.Tensor:
    """The seed paper's per-target samplers, reproduced for comparison (its sampling.py, cosine process).

    On the grid t = linspace(1 - 1e-4, 1e-4, steps + 1): x0 and eps use the ancestral (DDPM, eta = 1)
    step z_s = alpha_s x0_hat + sqrt(sigma_s^2 - eta^2) eps_hat + eta xi; v the deterministic angle step
    z_s = cos(phi_s - phi_t) z_t + sin(phi_s - phi_t) v_hat; score the annealed-Langevin update
    z += sigma_t^2 s_hat + sqrt(2) sigma_t xi (no reverse-SDE drift, no final denoising), as in the seed.
    `clamp` clips the eps sampler's x0_hat to [-1, 1], as the seed does for images (not for its x sampler).
    Each network's x0 estimate is converted to the target it was trained on with `prediction_from_x0`.
    """

    process = get_objective("cosine").process
    grid = torch.linspace(1 - 1e-4, 1e-4, steps + 1, dtype=torch.float64)
    z = torch.randn(shape, generator=generator)

    def predict(z, t, kind):
        t_vec = torch.full((len(z),), float(t), dtype=torch.float64)
        alpha = float(process.alpha(t_vec[:1]))
        x0_hat = denoiser(z / alpha, process.ve_sigma(t_vec))
        return x0_hat, prediction_from_x0(kind, process, t_vec, z, x0_hat).to(z.dtype)

    for t, s in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        a_t, s_t = float(process.alpha(torch.tensor(t))), float(process.sigma(torch.tensor(t)))
        a_s, s_s = float(process.alpha(torch.tensor(s))), float(process.sigma(torch.tensor(s)))
        if target in ("x0", "eps"):
            x0_hat, eps_hat = predict(z, t, "eps")
            if clamp and target == "eps":
                x0_hat = x0_hat.clamp(-1, 1)
            eta = s_s / s_t * math.sqrt(max(0.0, 1 - a_t**2 / a_s**2))
            z = a_s * x0_hat + math.sqrt(max(0.0, s_s**2 - eta**2)) * eps_hat + eta * torch.randn(
                shape, generator=generator)
        elif target == "v":
            _, v_hat = predict(z, t, "v")
            delta = math.pi / 2 * (s - t)
            z = math.cos(delta) * z + math.sin(delta) * v_hat
        else:
            _, score_hat = predict(z, t, "score")
            z = z + s_t**2 * score_hat + math.sqrt(2) * s_t * torch.randn(shape, generator=generator)
    return z
