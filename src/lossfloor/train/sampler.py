"""`ScheduleSampler`: a schedule's noise levels and loss for a user's own training loop."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from lossfloor.objective.objective import Objective, get_objective
from lossfloor.train.schedules import apply_schedule

# --------------------------------------------------------------------------------------------
# For a user's own training loop.
# --------------------------------------------------------------------------------------------


class ScheduleSampler:
    """A schedule for your own loop: draw sigma, weigh your target-space loss, feed back x0 losses.

    `objective` names your process and target (e.g. "flow" = rectified flow, velocity; "vp-eps-simple";
    or an `Objective`); `target` overrides the target space you compute your loss in.  Per step:
    ``sigma = s.sample_sigma(B)``, ``t = s.t(sigma)``, noise your data at t, compute the per-sample mean
    squared error on your target, ``loss = s.loss(sigma, mse).mean()``, and ``s.update(sigma, s.x0_loss(sigma,
    mse))``; or, with a network that takes (c_in x~, c_noise), ``loss, x0_loss = s.objective.loss(net, x0,
    generator=...)``.  Add ``s.parameters()`` to your optimizer (EDM2's learned weighting has some); save
    ``s.state_dict()`` with your checkpoint.
    """

    def __init__(self, objective, schedule: str = "native", *, curve=None, target: str | None = None,
                 seed: int = 0, **options):
        base = get_objective(objective) if isinstance(objective, str) else objective
        if target is not None:
            base = base.with_(target=target)
        self.objective = apply_schedule(base, schedule, curve, **options)
        self.generator = torch.Generator().manual_seed(seed)

    def sample_sigma(self, n: int) -> Tensor:
        """n VE noise levels sigma = sigma_t / alpha_t (float64)."""
        return self.objective.sample_sigma(n, self.generator)

    def t(self, sigma: Tensor) -> Tensor:
        """The process time of each VE sigma."""
        return self.objective.process.t_of_sigma(sigma)

    def weight(self, sigma: Tensor) -> Tensor:
        """Per-sample weight on the squared error of your target (lambda(sigma) / the target's x0 factor)."""
        return self.objective.target_weight(self.t(sigma))

    def x0_loss(self, sigma: Tensor, target_mse: Tensor) -> Tensor:
        """Your target-space per-sample error converted to ||x0_hat - x0||^2 / D."""
        return self.objective.x0_loss_from_target(self.t(sigma), target_mse.detach()).cpu()

    def loss(self, sigma: Tensor, target_mse: Tensor) -> Tensor:
        """Per-sample training loss: weight * target_mse (and EDM2's e^-u, + u, when learned)."""
        return self.objective.loss_from_target(self.t(sigma), target_mse, sigma)

    def update(self, sigma: Tensor, x0_loss: Tensor) -> None:
        """Feed the step's x0 losses to an adaptive schedule (no-op for static ones)."""
        self.objective.update(sigma, x0_loss)

    def parameters(self) -> list[nn.Parameter]:
        return self.objective.parameters()

    def state_dict(self) -> dict:
        return dict(objective=self.objective.to_dict(), generator=self.generator.get_state())

    def load_state_dict(self, state: Mapping) -> None:
        self.objective = Objective.from_dict(state["objective"])
        self.generator.set_state(state["generator"])
