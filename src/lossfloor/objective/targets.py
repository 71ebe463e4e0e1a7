"""Prediction targets as affine maps target = a x_t + b x0, EDM preconditioning and every derived
conversion."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lossfloor.core.registry import Registry
from lossfloor.objective.components import Component, as_f64, register_component
from lossfloor.objective.processes import Process

# --------------------------------------------------------------------------------------------
# Targets: each is affine in x0 for fixed x_t, target = a x_t + b x0.
# --------------------------------------------------------------------------------------------

TARGETS = Registry("target")
"""Target name -> coefficients(process, t, alpha_t, sigma_t, precond) -> (a, b): one affine pair each."""
TARGETS.add("x0", lambda p, t, al, si, pre: (torch.zeros_like(t), torch.ones_like(t)), "the clean data x0")
TARGETS.add("eps", lambda p, t, al, si, pre: (1 / si, -al / si), "the noise eps = (x_t - alpha x0) / sigma")
TARGETS.add("v", lambda p, t, al, si, pre: (al / si, -(al**2 + si**2) / si),
            "v = alpha eps - sigma x0 (Salimans & Ho)")
TARGETS.add("score", lambda p, t, al, si, pre: (-1 / si**2, al / si**2),
            "the score grad log p(x_t | x0) = -eps / sigma")


def _velocity(process, t, al, si, precond):
    da, ds = process.derivatives(t)  # d x_t / dt = alpha' x0 + sigma' eps
    return ds / si, da - ds * al / si


def _edm_f(process, t, al, si, precond):
    s = si / al  # x0 = c_skip x~ + c_out F, x~ = x_t / alpha
    c_out = precond.c_out(s)
    return -precond.c_skip(s) / (al * c_out), 1 / c_out


TARGETS.add("velocity", _velocity, "the flow velocity d x_t / dt")
TARGETS.add("F", _edm_f, "EDM's raw network output F (preconditioned)")


@register_component("edm_precond")
@dataclass(frozen=True)
class Preconditioning(Component):
    """EDM preconditioning in VE coordinates; the network sees c_in * x~ and c_noise."""

    sigma_data: float = 0.5

    def c_skip(self, s):
        return self.sigma_data**2 / (s**2 + self.sigma_data**2)

    def c_out(self, s):
        return s * self.sigma_data / torch.sqrt(s**2 + self.sigma_data**2)

    def c_in(self, s):
        return 1 / torch.sqrt(s**2 + self.sigma_data**2)

    def c_noise(self, s):
        return torch.log(s) / 4


def target_coefficients(target: str, process: Process, t: Tensor,
                        precond: Preconditioning = Preconditioning()) -> tuple[Tensor, Tensor]:
    """(a, b) with target = a * x_t + b * x0 at time t."""
    coefficients = TARGETS.require(target)
    t = as_f64(t)
    return coefficients(process, t, process.alpha(t), process.sigma(t), precond)


def per_sample(c: Tensor, like: Tensor) -> Tensor:
    """Per-sample scalars (B,) broadcast against a batch (B, ...), on its device and in its dtype."""
    return c.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def process_input(process: Process, x_tilde: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(t, x_t) for a VE-coordinate input x~ = x0 + sigma * eps: t = t(sigma) and x_t = alpha_t * x~."""
    t = process.t_of_sigma(sigma)
    return t, per_sample(process.alpha(t), x_tilde) * x_tilde


def network_input(process: Process, precond: Preconditioning, x_t: Tensor,
                  t: Tensor) -> tuple[Tensor, Tensor]:
    """What the network sees at process times t (float64, shape (B,)): c_in(sigma) x_t / alpha_t and
    c_noise(sigma), VE sigma = sigma_t / alpha_t, on x_t's device and in its dtype."""
    sigma = process.ve_sigma(t)
    # c_in / alpha in float64: alpha -> 0 and sigma -> inf cancel (flow, cosine near t = 1).
    scale = precond.c_in(sigma) / process.alpha(t)
    c_noise = precond.c_noise(sigma).to(device=x_t.device, dtype=x_t.dtype)
    return per_sample(scale, x_t) * x_t, c_noise


def make_target(target, process, t, x_t, x0, precond=Preconditioning()) -> Tensor:
    """The regression target of `target` for clean data x0 noised to x_t at time t."""
    a, b = target_coefficients(target, process, t, precond)
    return per_sample(a, x_t) * x_t + per_sample(b, x0) * x0


def x0_from_prediction(target, process, t, x_t, pred, precond=Preconditioning()) -> Tensor:
    """Invert the target's affine map: the x0 estimate implied by a prediction of `target`."""
    a, b = target_coefficients(target, process, t, precond)
    return (pred - per_sample(a, x_t) * x_t) / per_sample(b, pred)


def prediction_from_x0(target, process, t, x_t, x0_hat, precond=Preconditioning()) -> Tensor:
    """The prediction of `target` that corresponds to the x0 estimate x0_hat."""
    return make_target(target, process, t, x_t, x0_hat, precond)


def target_error_factor(target, process, t, precond=Preconditioning()) -> Tensor:
    """||pred - target||^2 = factor * ||x0_hat - x0||^2 (the b^2 of the affine map)."""
    return target_coefficients(target, process, t, precond)[1] ** 2
