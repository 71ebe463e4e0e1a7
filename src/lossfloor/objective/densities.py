"""Noise densities, one family: a density of log sigma (normal, uniform, logistic, Laplace) or, where the
law is one of the process's time, of t (uniform, DDPM's discrete steps).

The objective supplies the process: a density of log sigma is carried to t through it, which is how
training draws t.  Old kind names load through `objective.legacy`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lossfloor.objective.components import F64, Component, as_f64, check_positive, register_component
from lossfloor.objective.processes import Process


class NoiseDensity(Component):
    """A distribution of the noise level under a process: drawn as process times t, with the CDF and the
    log density in t (`Objective` turns them into sigma and log sigma)."""

    atoms: Tensor | None = None  # discrete support in t, uniform probability

    def sample_t(self, process: Process, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def cdf_t(self, process: Process, t: Tensor) -> Tensor:
        raise NotImplementedError

    def log_density_t(self, process: Process, t: Tensor) -> Tensor:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Densities of the process time t, where the law is one of t (the same t for every process).
# --------------------------------------------------------------------------------------------


class TimeDistribution(NoiseDensity):
    """A distribution of t: sampling, CDF and density (or atoms, for discrete ones)."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def cdf(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def log_density(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sample_t(self, process, n, generator=None):
        return self.sample(n, generator)

    def cdf_t(self, process, t):
        return self.cdf(t)

    def log_density_t(self, process, t):
        return self.log_density(t)


@register_component("uniform")
@dataclass(frozen=True)
class UniformT(TimeDistribution):
    """t ~ U(lo, hi)."""

    lo: float = 0.0
    hi: float = 1.0

    def sample(self, n, generator=None):
        return self.lo + (self.hi - self.lo) * torch.rand(n, generator=generator, dtype=F64)

    def cdf(self, t):
        return ((as_f64(t) - self.lo) / (self.hi - self.lo)).clamp(0, 1)

    def log_density(self, t):
        t = as_f64(t)
        inside = (t >= self.lo) & (t <= self.hi)
        return torch.where(inside, -math.log(self.hi - self.lo), -math.inf)


@register_component("discrete_uniform")
@dataclass(frozen=True)
class DiscreteUniformT(TimeDistribution):
    """t = j / T with j ~ U{1..T} (DDPM-style integer timesteps)."""

    steps: int = 1000

    @property
    def atoms(self):
        return torch.arange(1, self.steps + 1, dtype=F64) / self.steps

    def sample(self, n, generator=None):
        j = torch.randint(1, self.steps + 1, (n,), generator=generator)
        return j.to(F64) / self.steps

    def cdf(self, t):
        return (torch.floor(as_f64(t) * self.steps + 1e-9) / self.steps).clamp(0, 1)


# --------------------------------------------------------------------------------------------
# Noise densities over log sigma, carried to the objective's process time t.
# --------------------------------------------------------------------------------------------


class LogSigmaDensity(NoiseDensity):
    """A density of log sigma (VE sigma = sigma_t / alpha_t), the same for every process."""

    def sample_log_sigma(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def cdf_log_sigma(self, log_sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def log_density_log_sigma(self, log_sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def sample_t(self, process, n, generator=None):
        return process.t_of_sigma(torch.exp(self.sample_log_sigma(n, generator)))

    def cdf_t(self, process, t):
        return self.cdf_log_sigma(torch.log(process.ve_sigma(t)))

    def log_density_t(self, process, t):
        """Density in t: p(log sigma) |d log sigma / dt|."""
        return self.log_density_log_sigma(torch.log(process.ve_sigma(t))) + process.log_sigma_jacobian(t)


@register_component("lognormal")
@dataclass(frozen=True)
class LogSigmaNormal(LogSigmaDensity):
    """log sigma ~ N(mean, std^2): EDM (-1.2, 1.2), EDM2 (-0.4, 1.0); for flow matching SD3's logit-normal."""

    mean: float = -1.2
    std: float = 1.2

    def __post_init__(self):
        check_positive(std=self.std)

    def sample_log_sigma(self, n, generator=None):
        return self.mean + self.std * torch.randn(n, generator=generator, dtype=F64)

    def cdf_log_sigma(self, log_sigma):
        z = (as_f64(log_sigma) - self.mean) / self.std
        return 0.5 * torch.erfc(-z / math.sqrt(2))

    def log_density_log_sigma(self, log_sigma):
        z = (as_f64(log_sigma) - self.mean) / self.std
        return -0.5 * z**2 - math.log(self.std * math.sqrt(2 * math.pi))


def logit_normal(mean: float = 0.0, std: float = 1.0, shift: float = 1.0) -> LogSigmaNormal:
    """SD3's flow-matching times: t = sigmoid(u), u ~ N(mean, std^2), then t' = shift t / (1 + (shift - 1) t).

    For flow matching log sigma = logit(t) and logit(t') = logit(t) + log(shift), so this is log sigma ~
    N(mean + log shift, std^2) (on another process: that density of log sigma).
    """
    return LogSigmaNormal(mean + math.log(shift), std)


@register_component("loguniform")
@dataclass(frozen=True)
class LogSigmaUniform(LogSigmaDensity):
    """log sigma ~ U(log lo, log hi) (VE / NCSN++)."""

    lo: float = 0.02
    hi: float = 100.0

    def sample_log_sigma(self, n, generator=None):
        return math.log(self.lo) + torch.rand(n, generator=generator, dtype=F64) * math.log(self.hi / self.lo)

    def cdf_log_sigma(self, log_sigma):
        return ((as_f64(log_sigma) - math.log(self.lo)) / math.log(self.hi / self.lo)).clamp(0, 1)

    def log_density_log_sigma(self, log_sigma):
        ls = as_f64(log_sigma)
        inside = (ls >= math.log(self.lo)) & (ls <= math.log(self.hi))
        return torch.where(inside, torch.full_like(ls, -math.log(math.log(self.hi / self.lo))), -math.inf)


@register_component("log_sigma_logistic")
@dataclass(frozen=True)
class LogSigmaLogistic(LogSigmaDensity):
    """log sigma ~ Logistic(loc, scale); (0, 1) is flow matching's uniform t (sigma = t / (1 - t))."""

    loc: float = 0.0
    scale: float = 1.0

    def __post_init__(self):
        check_positive(scale=self.scale)

    def sample_log_sigma(self, n, generator=None):
        u = torch.rand(n, generator=generator, dtype=F64).clamp(1e-12, 1 - 1e-12)
        return self.loc + self.scale * torch.logit(u)

    def cdf_log_sigma(self, log_sigma):
        return torch.sigmoid((as_f64(log_sigma) - self.loc) / self.scale)

    def log_density_log_sigma(self, log_sigma):
        z = (as_f64(log_sigma) - self.loc) / self.scale
        return -torch.nn.functional.softplus(-z) - torch.nn.functional.softplus(z) - math.log(self.scale)


@register_component("log_snr_laplace")
@dataclass(frozen=True)
class LogSigmaLaplace(LogSigmaDensity):
    """Hang et al. 2024: log SNR ~ Laplace(mu, b), i.e. log sigma = -log SNR / 2 ~ Laplace(-mu/2, b/2)."""

    mu: float = 0.0
    b: float = 0.5

    def __post_init__(self):
        check_positive(b=self.b)

    def sample_log_sigma(self, n, generator=None):
        u = torch.rand(n, generator=generator, dtype=F64).clamp(1e-12, 1 - 1e-12) - 0.5
        return -self.mu / 2 - (self.b / 2) * torch.sign(u) * torch.log1p(-2 * u.abs())

    def cdf_log_sigma(self, log_sigma):
        z = (as_f64(log_sigma) + self.mu / 2) / (self.b / 2)
        return torch.where(z < 0, 0.5 * torch.exp(z.clamp(max=0)), 1 - 0.5 * torch.exp(-z.clamp(min=0)))

    def log_density_log_sigma(self, log_sigma):
        return -(as_f64(log_sigma) + self.mu / 2).abs() / (self.b / 2) - math.log(self.b)
