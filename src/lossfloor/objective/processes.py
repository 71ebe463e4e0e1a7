"""Diffusion processes (VE, VP, cosine, flow, discrete DDPM/iDDPM): alpha_t, sigma_t and sigma =
sigma_t/alpha_t."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from lossfloor.objective.components import F64, Component, as_f64, plain, register_component

# --------------------------------------------------------------------------------------------
# Processes: x_t = alpha(t) x0 + sigma(t) eps.  ve_sigma(t) = sigma/alpha is increasing in t.
# --------------------------------------------------------------------------------------------


class Process(Component):
    """A forward process; subclasses give alpha(t), sigma(t) and the inverse of sigma/alpha."""

    name: str = "process"
    t_min: float = 0.0
    t_max: float = 1.0

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def t_of_sigma(self, ve_sigma: Tensor) -> Tensor:
        """Inverse of `ve_sigma`: the time at which sigma_t / alpha_t equals ve_sigma."""
        raise NotImplementedError

    def ve_sigma(self, t: Tensor) -> Tensor:
        """VE noise level sigma_t / alpha_t (inverse square root of the SNR)."""
        t = as_f64(t)
        return self.sigma(t) / self.alpha(t)

    def log_sigma_jacobian(self, t: Tensor) -> Tensor:
        """log |d log ve_sigma / dt| (by autograd): carries a density over log sigma to one over t."""
        t = as_f64(t).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            dls, = torch.autograd.grad(torch.log(self.ve_sigma(t)).sum(), t)
        return torch.log(dls.abs())

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(d alpha/dt, d sigma/dt) by autograd, so each process is written once."""
        t = as_f64(t).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            return _grad(self.alpha(t), t), _grad(self.sigma(t), t)


def _grad(y: Tensor, t: Tensor) -> Tensor:
    """Elementwise dy/dt; zero where y does not depend on t (e.g. VE's constant alpha)."""
    if not y.requires_grad:
        return torch.zeros_like(t).detach()
    g, = torch.autograd.grad(y.sum(), t, allow_unused=True, materialize_grads=True)
    return g.detach()


@register_component("ve")
@dataclass(frozen=True)
class VE(Process):
    """Variance exploding: alpha = 1, sigma = t (t *is* the noise level)."""

    name = "ve"
    t_max = math.inf

    def alpha(self, t):
        return torch.ones_like(as_f64(t))

    def sigma(self, t):
        return as_f64(t) * 1.0

    def t_of_sigma(self, ve_sigma):
        return as_f64(ve_sigma) * 1.0

    def log_sigma_jacobian(self, t):
        return -torch.log(as_f64(t))  # log sigma = log t


@register_component("vp")
@dataclass(frozen=True)
class VP(Process):
    """Song et al. continuous VP: alpha_bar = exp(-beta_d t^2 / 2 - beta_min t)."""

    beta_min: float = 0.1
    beta_d: float = 19.9
    name = "vp"

    def _log_abar(self, t):
        t = as_f64(t)
        return -0.5 * self.beta_d * t**2 - self.beta_min * t

    def alpha(self, t):
        return torch.exp(0.5 * self._log_abar(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(self._log_abar(t)))

    def t_of_sigma(self, ve_sigma):
        c = torch.log1p(as_f64(ve_sigma) ** 2)
        return (torch.sqrt(self.beta_min**2 + 2 * self.beta_d * c) - self.beta_min) / self.beta_d


@register_component("cosine")
@dataclass(frozen=True)
class Cosine(Process):
    """Plain cosine VP: alpha = cos(pi t / 2), sigma = sin(pi t / 2)."""

    name = "cosine"

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * as_f64(t))

    def sigma(self, t):
        return torch.sin(0.5 * math.pi * as_f64(t))

    def t_of_sigma(self, ve_sigma):
        return torch.atan(as_f64(ve_sigma)) * (2 / math.pi)


@register_component("flow")
@dataclass(frozen=True)
class Flow(Process):
    """Rectified flow / flow matching: x_t = (1 - t) x0 + t eps."""

    name = "flow"

    def alpha(self, t):
        return 1.0 - as_f64(t)

    def sigma(self, t):
        return as_f64(t) * 1.0

    def t_of_sigma(self, ve_sigma):
        s = as_f64(ve_sigma)
        return s / (1.0 + s)


@register_component("discrete")
class Discrete(Process):
    """A discrete-time VP process given by alpha_bar at t = j/T, j = 1..T.

    Between grid points log alpha_bar is interpolated linearly in t (alpha_bar(0) = 1), which makes
    alpha, sigma and their derivatives defined everywhere; the noise distribution only samples the grid.
    `recipe` is the registered factory call that built it ({"kind": "ddpm", ...}); it is what `to_dict`
    saves, else alpha_bar itself.
    """

    def __init__(self, alpha_bar, name: str = "discrete", recipe: dict | None = None):
        self.name = name
        self.recipe = recipe
        self.alpha_bar = as_f64(alpha_bar)
        self.steps = len(alpha_bar)
        self._grid_t = torch.arange(0, self.steps + 1, dtype=F64) / self.steps
        self._log_abar = torch.cat([torch.zeros(1, dtype=F64), torch.log(as_f64(alpha_bar))])
        # log(1 + sigma~^2) = -log alpha_bar is increasing on the grid: invert by interpolation.
        self._log1p_s2 = -self._log_abar

    def _interp(self, x, xp, fp):
        x = as_f64(x)
        idx = torch.searchsorted(xp, x.clamp(xp[0], xp[-1]).detach()).clamp(1, len(xp) - 1)
        x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
        return f0 + (f1 - f0) * (x - x0) / (x1 - x0)

    def _log_abar_at(self, t):
        return self._interp(t, self._grid_t, self._log_abar)

    def alpha(self, t):
        return torch.exp(0.5 * self._log_abar_at(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(self._log_abar_at(t)))

    def t_of_sigma(self, ve_sigma):
        return self._interp(torch.log1p(as_f64(ve_sigma) ** 2), self._log1p_s2, self._grid_t)

    def to_dict(self) -> dict:
        """Its recipe ({"kind": "ddpm", ...}) when it has one, else {"kind": "discrete", alpha_bar, name}."""
        if self.recipe is not None:
            return plain(self.recipe)
        return {"kind": "discrete", "alpha_bar": self.alpha_bar.tolist(), "name": self.name}

    @classmethod
    def from_dict(cls, d: Mapping) -> Discrete:
        return cls(d["alpha_bar"], d.get("name", "discrete"))


@register_component("ddpm")
def ddpm_process(beta_start: float = 1e-4, beta_end: float = 0.02, steps: int = 1000) -> Discrete:
    """Ho et al. DDPM: linear beta from 1e-4 to 0.02 over T = 1000 steps."""
    betas = torch.linspace(beta_start, beta_end, steps, dtype=F64)
    recipe = dict(kind="ddpm", beta_start=beta_start, beta_end=beta_end, steps=steps)
    return Discrete(torch.cumprod(1 - betas, 0), "ddpm", recipe)


@register_component("iddpm")
def iddpm_process(s: float = 0.008, steps: int = 1000, max_beta: float = 0.999) -> Discrete:
    """Nichol & Dhariwal cosine schedule, alpha_bar(t) = f(t)/f(0), betas clipped at 0.999."""
    f = lambda t: torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    t = torch.arange(steps + 1, dtype=F64) / steps
    abar = f(t) / f(t[:1])
    betas = (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)
    recipe = dict(kind="iddpm", s=s, steps=steps, max_beta=max_beta)
    return Discrete(torch.cumprod(1 - betas, 0), "iddpm", recipe)
