"""The training loss of an objective, the one place it is assembled: `Objective.loss` (a network on clean
data), `Objective.loss_from_target` (a per-sample target error) and the x0 loss they imply."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lossfloor.objective.targets import make_target, network_input, per_sample, target_error_factor

if TYPE_CHECKING:
    from lossfloor.objective.objective import Objective


def x0_loss_from_target(objective: Objective, t: Tensor, target_loss: Tensor) -> Tensor:
    """The x0 loss ||x0_hat - x0||^2 / D from a per-sample squared error on the objective's own target at
    process times t (||pred - target||^2 / D = b(t)^2 ||x0_hat - x0||^2 / D): what training and
    `GapMonitor` observe.

    Training keeps its error in target space, where it is accurate (converting a float32 prediction to x0
    first loses digits where b is large, e.g. epsilon prediction at small sigma), and divides here.
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    factor = target_error_factor(objective.target, objective.process, t.cpu(), objective.precond)
    return target_loss.double() / factor.to(target_loss.device)


def loss_from_target(objective: Objective, t: Tensor, target_loss: Tensor,
                     sigma: Tensor | None = None) -> Tensor:
    """The per-sample training loss from the per-sample target error at process times t: the target-space
    weight times the error, through the weight's and density's hooks (EDM2's learned u: e^-u loss + u).
    sigma: the VE levels of t, when the caller has them (else sigma(t))."""
    sigma = objective.process.ve_sigma(t) if sigma is None else sigma
    weight = objective.target_weight(t).to(device=target_loss.device, dtype=target_loss.dtype)
    return objective.augment(sigma, weight * target_loss)


def objective_loss(objective: Objective, net: Callable[[Tensor, Tensor], Tensor], x0: Tensor,
                   t: Tensor | None = None, eps: Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(training loss, x0 loss) per sample, unreduced: see `Objective.loss`."""
    t = objective.sample_t(len(x0), generator) if t is None else torch.as_tensor(t, dtype=torch.float64).cpu()
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    x0_64, eps_64 = x0.double(), eps.double()
    # Noising and the target in float64: the target's coefficients diverge at the ends of the schedule.
    alpha = per_sample(objective.process.alpha(t), x0_64)
    sigma_t = per_sample(objective.process.sigma(t), x0_64)
    x_t = alpha * x0_64 + sigma_t * eps_64
    target = make_target(objective.target, objective.process, t, x_t, x0_64, objective.precond).float()
    pred = net(*network_input(objective.process, objective.precond, x_t.float(), t))
    err = (pred - target).pow(2).flatten(1).mean(1)
    x0_loss = x0_loss_from_target(objective, t, err.detach())
    return loss_from_target(objective, t, err), x0_loss
