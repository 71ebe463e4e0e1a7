"""Loss weights lambda(sigma) on the x0 loss, one family of registered classes: simple, NELBO, EDM, min-SNR
and soft-min-SNR (the schedules' learned and J*-based ones are in `lossfloor.train.adaptive`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lossfloor.core.registry import Registry
from lossfloor.objective.components import (
    Component,
    as_f64,
    check_positive,
    register_component,
)
from lossfloor.objective.targets import Preconditioning, target_error_factor

if TYPE_CHECKING:
    from lossfloor.objective.objective import Objective


def nelbo_log_sigma_weight(sigma: Tensor) -> Tensor:
    """The continuous-time NELBO's weight on ||x0_hat - x0||^2 per unit of log sigma: 1 / sigma^2.

    The VDM bound int -1/2 SNR'(t) J dt becomes int J / sigma^2 d log sigma with SNR = 1/sigma^2, the
    same for every process (the bound is invariant to the schedule between its end points).
    """
    return as_f64(sigma) ** -2


# --------------------------------------------------------------------------------------------
# Loss weights lambda(sigma) on ||x0_hat - x0||^2 (VE sigma; per dimension, like J*).
# --------------------------------------------------------------------------------------------


class Weight(Component):
    """An x0-space loss weight; `objective` supplies the process and target where a weight needs them."""

    def x0_weight(self, sigma: Tensor, objective: Objective) -> Tensor:
        raise NotImplementedError


class NamedWeight(Weight):
    """A weight without parameters: saved as its name (`objective.legacy`), shown as it."""

    def to_dict(self) -> str:
        if not self.kind:
            raise TypeError(f"{type(self).__name__} is not registered with @register_component")
        return self.kind

    def __str__(self) -> str:
        return self.kind


@register_component("simple")
@dataclass(frozen=True)
class Simple(NamedWeight):
    """The plain MSE on the objective's own target: lambda = b(t)^2, the target's x0 error factor."""

    def x0_weight(self, sigma, objective):
        t = objective.process.t_of_sigma(sigma)
        return target_error_factor(objective.target, objective.process, t, objective.precond)


@register_component("nelbo")
@dataclass(frozen=True)
class NELBO(NamedWeight):
    """The continuous-time NELBO: its per-log-sigma weight 1/sigma^2 over the objective's density
    p(log sigma), so that E_p[lambda J] is the bound's diffusion term under any sampling density."""

    def x0_weight(self, sigma, objective):
        s = as_f64(sigma)
        return nelbo_log_sigma_weight(s) * torch.exp(-objective.log_density(torch.log(s)))


@register_component("edm_weight")
@dataclass(frozen=True)
class EDMWeight(Weight):
    """Karras et al. 2022: lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2."""

    sigma_data: float = 0.5

    def x0_weight(self, sigma, objective=None):
        return Preconditioning(self.sigma_data).c_out(as_f64(sigma)) ** -2


@register_component("min_snr")
@dataclass(frozen=True)
class MinSNRWeight(Weight):
    """Hang et al. 2023 min-SNR-gamma: lambda = min(SNR, gamma), SNR = 1 / sigma^2.

    Its epsilon form min(SNR, gamma) / SNR and its v form min(SNR, gamma) / (SNR + 1) (on the eps and v
    losses of a VP process) are the same x0 weight; `target_weight` gives either.
    """

    gamma: float = 5.0

    def __post_init__(self):
        check_positive(gamma=self.gamma)

    def x0_weight(self, sigma, objective=None):
        return torch.clamp(as_f64(sigma) ** -2, max=self.gamma)


@register_component("soft_min_snr")
@dataclass(frozen=True)
class SoftMinSNRWeight(Weight):
    """k-diffusion's soft-min-SNR: (sigma sigma_d)^2 / (sigma^2 + sigma_d^2)^2 on the F loss, i.e.
    lambda = 1 / (sigma^2 + sigma_d^2), a harmonic soft minimum of SNR and 1 / sigma_d^2."""

    sigma_data: float = 0.5

    def x0_weight(self, sigma, objective=None):
        return 1.0 / (as_f64(sigma) ** 2 + self.sigma_data**2)


WEIGHTS = Registry("weight")
"""The weights of objective names `<preset>-<target>-<weight>`."""
WEIGHTS.add("simple", Simple, "the plain MSE on the objective's target")
WEIGHTS.add("nelbo", NELBO, "the continuous-time NELBO (needs a continuous noise density)")
