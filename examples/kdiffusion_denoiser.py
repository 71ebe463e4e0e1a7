"""A k-diffusion-style denoiser, and an epsilon-prediction network through lossfloor's adapter, checked
against the floor.

k-diffusion wraps an inner network F with the EDM scalings (``k_diffusion.layers.Denoiser``):
``D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, sigma)``; the wrapped model is called as
``model(x_noisy, sigma)`` and returns x0_hat, exactly what `FloorValidator` and ``lossfloor diagnose
--denoiser`` take.  An epsilon- (or v-, or flow-) network trained under a schedule of its own is turned into
the same call by `lossfloor.evaluate.adapters.eps_denoiser(net, objective)` (or ``v_denoiser``,
``flow_denoiser``).  The inner networks below are small and barely trained (a few hundred Adam steps on the
8x8 digits, seconds): the point is the calls, not the model.

    python examples/kdiffusion_denoiser.py
    lossfloor diagnose --denoiser examples/kdiffusion_denoiser.py:denoiser --data digits --objective edm \\
        --curve out/estimate/optimal_loss.json --out out/diagnose-kdiffusion
"""

from __future__ import annotations

import torch
from torch import nn

from lossfloor.data.load import load_dataset
from lossfloor.evaluate.adapters import eps_denoiser
from lossfloor.evaluate.validation import FloorValidator
from lossfloor.floor.config import EstimatorConfig
from lossfloor.floor.estimator import Estimator
from lossfloor.objective.objective import get_objective


class Inner(nn.Module):
    """F(x, c): an MLP on flattened inputs with the conditioning appended."""

    def __init__(self, dim: int, width: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, dim))

    def forward(self, x, c):
        flat = x.reshape(len(x), -1)
        return self.net(torch.cat([flat, c.reshape(-1, 1).to(flat.dtype)], 1)).reshape(x.shape)


class KDenoiser(nn.Module):
    """k_diffusion.layers.Denoiser: the EDM scalings around an inner model."""

    def __init__(self, inner: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.inner_model, self.sigma_data = inner, sigma_data

    def forward(self, x, sigma):
        s = sigma.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        c_skip = self.sigma_data**2 / (s**2 + self.sigma_data**2)
        c_out = s * self.sigma_data / (s**2 + self.sigma_data**2) ** 0.5
        c_in = 1 / (s**2 + self.sigma_data**2) ** 0.5
        return self.inner_model(x * c_in, sigma.log() / 4) * c_out + x * c_skip


def train_kdenoiser(x: torch.Tensor, steps: int = 300, seed: int = 0) -> KDenoiser:
    """A few hundred steps of EDM training (k-diffusion's loss: weighted x0 error, log-normal sigma)."""
    torch.manual_seed(seed)
    model = KDenoiser(Inner(x[0].numel()))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        x0 = x[torch.randint(len(x), (128,))]
        sigma = (torch.randn(128) * 1.2 - 1.2).exp()
        s = sigma.reshape(-1, *([1] * (x0.dim() - 1)))
        weight = (s**2 + 0.25) / (s * 0.5) ** 2
        loss = (weight * (model(x0 + s * torch.randn_like(x0), sigma) - x0) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def train_eps_net(x: torch.Tensor, objective, steps: int = 300, seed: int = 0) -> nn.Module:
    """An epsilon-prediction MLP net(x_t, t) under the objective's own process (DDPM-style training)."""
    torch.manual_seed(seed)
    net = Inner(x[0].numel())
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(steps):
        x0 = x[torch.randint(len(x), (128,))]
        t = objective.sample_t(128)
        alpha, sigma = objective.process.alpha(t).float(), objective.process.sigma(t).float()
        eps = torch.randn_like(x0)
        x_t = alpha.reshape(-1, 1) * x0 + sigma.reshape(-1, 1) * eps
        loss = ((net(x_t, t.float()) - eps) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def denoiser(device="cpu") -> nn.Module:
    """The factory for ``lossfloor diagnose --denoiser examples/kdiffusion_denoiser.py:denoiser``."""
    return train_kdenoiser(load_dataset("digits").x.reshape(-1, 64)).to(device)


def main(points: int = 256, queries: int = 512, steps: int = 300) -> dict:
    data = load_dataset("digits")
    x = data.x.reshape(len(data.x), -1)
    sigmas = torch.logspace(-2, 1.5, 12).tolist()
    curve = Estimator(data.rows(), EstimatorConfig(queries=queries)).curve(sigmas, seed=0, progress=False)
    edm = get_objective("edm")
    validator = FloorValidator(x, curve, edm, points=points, seed=0)
    early, late = train_kdenoiser(x, steps // 3), train_kdenoiser(x, steps)
    r_early, r_late = validator(early), validator(late)
    diff = r_late.minus(r_early)
    print(f"k-diffusion Denoiser, {steps // 3} steps: excess {r_early.excess:.4f} ± "
          f"{r_early.excess_stderr:.4f}; "
          f"{steps} steps: {r_late.excess:.4f} ± {r_late.excess_stderr:.4f}; "
          f"paired difference {diff.excess:+.4f} ± {diff.excess_stderr:.4f}")
    vp = get_objective("vp")  # an epsilon network under its own schedule, through the adapter
    eps = eps_denoiser(train_eps_net(x, vp, steps), vp)
    r_eps = FloorValidator(x, curve, vp, points=points, seed=0)(eps)
    print(f"epsilon network (vp): excess over the floor under vp's weighting {r_eps.excess:.4f} ± "
          f"{r_eps.excess_stderr:.4f}")
    return {**r_late.scalars("kdiffusion/"), **diff.scalars("kdiffusion_diff/"), **r_eps.scalars("eps/")}


if __name__ == "__main__":
    main()
