"""Adapters: a network that predicts its objective's target (epsilon, v, flow velocity, ...) from (x_t, t),
as an x0-denoiser ``denoise(x_noisy, sigma) -> x0_hat`` in the EDM / k-diffusion convention (x_noisy =
x0 + sigma eps, sigma the VE noise level), the form `FloorValidator` and `lossfloor diagnose` evaluate.

The maths is the objective's: `objective.targets.process_input` (t and x_t = alpha_t x~ from sigma) and
`x0_from_prediction` (the target's affine map inverted); nothing is re-derived here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lossfloor.objective.objective import Objective
from lossfloor.objective.targets import process_input, x0_from_prediction


def _time(t: Tensor) -> Tensor:
    return t


class PredictionDenoiser(nn.Module):
    """x0 from a network ``net(x_t, condition(t))`` whose output is `objective.target` at process time t.

    condition: what the network is given for t (default: t itself, in the input's dtype); e.g.
    ``lambda t: t * 1000`` for a DDPM network trained on integer timesteps (t = (k + 1) / T).
    """

    def __init__(self, net: Callable, objective: Objective,
                 condition: Callable[[Tensor], Tensor] | None = None):
        super().__init__()
        self.net, self.objective = net, objective
        self.condition = condition or _time

    def forward(self, x_noisy: Tensor, sigma) -> Tensor:
        obj = self.objective
        sigma = torch.as_tensor(sigma, dtype=torch.float64).cpu()
        sigma = sigma.expand(len(x_noisy)) if sigma.dim() == 0 else sigma.reshape(-1)
        t, x_t = process_input(obj.process, x_noisy, sigma)
        pred = self.net(x_t, self.condition(t).to(device=x_noisy.device, dtype=x_noisy.dtype))
        return x0_from_prediction(obj.target, obj.process, t, x_t, pred, obj.precond)


def eps_denoiser(net: Callable, objective: Objective, condition=None) -> PredictionDenoiser:
    """An epsilon-prediction network ``net(x_t, t)`` under `objective`'s process (e.g. ddpm, cosine)."""
    return PredictionDenoiser(net, objective.with_(target="eps"), condition)


def v_denoiser(net: Callable, objective: Objective, condition=None) -> PredictionDenoiser:
    """A v-prediction network (v = alpha eps - sigma x0) under `objective`'s process."""
    return PredictionDenoiser(net, objective.with_(target="v"), condition)


def flow_denoiser(net: Callable, objective: Objective, condition=None) -> PredictionDenoiser:
    """A flow-matching network predicting the velocity d x_t / dt (e.g. the `flow` preset: x_t =
    (1 - t) x0 + t eps, velocity eps - x0)."""
    return PredictionDenoiser(net, objective.with_(target="velocity"), condition)


class CallableDenoiser(nn.Module):
    """Any callable ``denoise(x_noisy, sigma) -> x0_hat`` as a module (its parameters, if it is one, are
    this module's: devices are found from them)."""

    def __init__(self, denoise: Callable):
        super().__init__()
        self.denoise = denoise

    def forward(self, x_noisy: Tensor, sigma) -> Tensor:
        """The user's call, with sigma always a tensor of one level per sample (EDM convention)."""
        sigma = torch.as_tensor(sigma, dtype=x_noisy.dtype, device=x_noisy.device)
        return self.denoise(x_noisy, sigma.expand(len(x_noisy)) if sigma.dim() == 0 else sigma)
