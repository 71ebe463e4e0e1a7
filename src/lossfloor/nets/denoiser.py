"""`Denoiser` (any network + objective -> an x0-denoiser) and the model's x0 loss, the one place it is
computed from a denoiser (from a target error: `Objective.x0_loss_from_target`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lossfloor.objective.objective import Objective
from lossfloor.objective.targets import network_input, per_sample, process_input, x0_from_prediction


class Denoiser(nn.Module):
    """An x0-denoiser built from a network and an objective.

    The network sees ``c_in(sigma) * x_t / alpha_t`` and ``c_noise(sigma)`` (VE coordinates, sigma =
    sigma_t / alpha_t); its output is read as the objective's target.  ``prediction(x_t, t)`` is that raw
    output, ``x0(x_t, t)`` the implied x0 estimate, and ``forward(x_tilde, sigma)`` the same estimate from
    a VE-coordinate input x~ = x0 + sigma * eps, which is what samplers and diagnosis use.
    """

    def __init__(self, net: nn.Module, objective: Objective):
        super().__init__()
        self.net, self.objective = net, objective

    def _times(self, t, batch: int) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).cpu()
        return t.expand(batch) if t.dim() == 0 else t

    def prediction(self, x_t: Tensor, t) -> Tensor:
        """Raw network output at process time t (the objective's target)."""
        obj = self.objective
        return self.net(*network_input(obj.process, obj.precond, x_t, self._times(t, len(x_t))))

    def x0(self, x_t: Tensor, t) -> Tensor:
        """x0 estimate at process time t."""
        t = self._times(t, len(x_t))
        obj = self.objective
        return x0_from_prediction(obj.target, obj.process, t, x_t, self.prediction(x_t, t), obj.precond)

    def forward(self, x_tilde: Tensor, sigma) -> Tensor:
        """x0 estimate from VE coordinates x~ = x0 + sigma * eps."""
        t, x_t = process_input(self.objective.process, x_tilde, self._times(sigma, len(x_tilde)))
        return self.x0(x_t, t)


# --------------------------------------------------------------------------------------------
# The model's x0 loss: the quantity compared with J*(sigma) everywhere.
# --------------------------------------------------------------------------------------------


def per_sample_x0_loss(x0_hat: Tensor, x0: Tensor) -> Tensor:
    """||x0_hat - x0||^2 / D per sample, in float64: the normalisation of J*(sigma)."""
    return (x0_hat - x0).double().pow(2).flatten(1).mean(1)


def x0_loss(denoiser, x0: Tensor, sigma, eps: Tensor) -> Tensor:
    """The x0-denoiser's per-sample loss ||D(x0 + sigma eps, sigma) - x0||^2 / D (float64, shape (B,)).

    sigma: a float (passed to the denoiser as is, as samplers do) or a tensor of one level per sample;
    eps: standard normal noise of x0's shape.  Used by the diagnosis (model vs J*), the likelihood (NELBO,
    error curves) and, through `Objective.x0_loss_from_target`, training.  Runs under the caller's grad mode.
    """
    if isinstance(sigma, Tensor):
        return per_sample_x0_loss(denoiser(x0 + per_sample(sigma, x0) * eps, sigma), x0)
    return per_sample_x0_loss(denoiser(x0 + float(sigma) * eps, float(sigma)), x0)
