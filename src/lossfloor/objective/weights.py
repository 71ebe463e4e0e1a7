"""Loss weights lambda(sigma) on the x0 loss: simple, NELBO, EDM, min-SNR and soft-min-SNR."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lossfloor.objective.components import (
    Component,
    _positive,
    _t64,
    register_component,
)
from lossfloor.objective.targets import Preconditioning

if TYPE_CHECKING:
    from lossfloor.objective.objective import Objective

WEIGHTS = ("simple", "nelbo")


def nelbo_log_sigma_weight(sigma: Tensor) -> Tensor:
    """The continuous-time NELBO's weight on ||x0_hat - x0||^2 per unit of log sigma: 1 / sigma^2.

    The VDM bound int -1/2 SNR'(t) J dt becomes int J / sigma^2 d log sigma with SNR = 1/sigma^2, the
    same for every process (the bound is invariant to the schedule between its end points).
    """
    return _t64(sigma) ** -2







# --------------------------------------------------------------------------------------------
# Loss weights lambda(sigma) on ||x0_hat - x0||^2 (VE sigma; per dimension, like J*).
# --------------------------------------------------------------------------------------------


class Weight(Component):
    """An x0-space loss weight; `objective` supplies the process and target where a weight needs them."""

    def x0_weight(self, sigma: Tensor, objective: Objective) -> Tensor:
        raise NotImplementedError


@register_component("edm_weight")
@dataclass(frozen=True)
class EDMWeight(Weight):
    """Karras et al. 2022: lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2."""

    sigma_data: float = 0.5

    def x0_weight(self, sigma, objective=None):
        return Preconditioning(self.sigma_data).c_out(_t64(sigma)) ** -2


@register_component("min_snr")
@dataclass(frozen=True)
class MinSNRWeight(Weight):
    """Hang et al. 2023 min-SNR-gamma: lambda = min(SNR, gamma), SNR = 1 / sigma^2.

    Its epsilon form min(SNR, gamma) / SNR and its v form min(SNR, gamma) / (SNR + 1) (on the eps and v
    losses of a VP process) are the same x0 weight; `target_weight` gives either.
    """

    gamma: float = 5.0

    def __post_init__(self):
        _positive(gamma=self.gamma)

    def x0_weight(self, sigma, objective=None):
        return torch.clamp(_t64(sigma) ** -2, max=self.gamma)


@register_component("soft_min_snr")
@dataclass(frozen=True)
class SoftMinSNRWeight(Weight):
    """k-diffusion's soft-min-SNR: (sigma sigma_d)^2 / (sigma^2 + sigma_d^2)^2 on the F loss, i.e.
    lambda = 1 / (sigma^2 + sigma_d^2), a harmonic soft minimum of SNR and 1 / sigma_d^2."""

    sigma_data: float = 0.5

    def x0_weight(self, sigma, objective=None):
        return 1.0 / (_t64(sigma) ** 2 + self.sigma_data**2)
