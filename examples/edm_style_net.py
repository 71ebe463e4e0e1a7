"""An EDM-style network ``net(x, sigma) -> x0_hat`` checked against the floor with lossfloor's validator.

The network here is the best *linear* denoiser of the 8x8 digits (their mean and covariance:
x0_hat = mu + S (S + sigma^2 I)^-1 (x - mu)), called the way EDM's preconditioned networks are called:
``net(x_noisy, sigma)`` with sigma a tensor of one noise level per sample.  Any model with that call works
the same way, e.g. an EDM/EDM2 ``EDMPrecond`` or a k-diffusion ``Denoiser`` (examples/kdiffusion_denoiser.py).

    python examples/edm_style_net.py
    lossfloor diagnose --denoiser examples/edm_style_net.py:denoiser --data digits --objective edm \\
        --curve out/estimate/optimal_loss.json --out out/diagnose-edm-style

The factory ``denoiser()`` is what ``lossfloor diagnose --denoiser FILE.py:FACTORY`` calls (it runs this
file's code).  ``main()`` builds a `FloorValidator` once and compares the linear denoiser with a worse one
on identical draws: the paired difference of the objective-weighted excess over the floor, with its SE.
"""

from __future__ import annotations

import torch
from torch import nn

from lossfloor.data.load import load_dataset
from lossfloor.evaluate.validation import FloorValidator
from lossfloor.floor.config import EstimatorConfig
from lossfloor.floor.estimator import Estimator
from lossfloor.objective.objective import get_objective


class LinearEDMNet(nn.Module):
    """The Wiener filter of data with mean mu and covariance S, as an EDM-style net(x, sigma)."""

    def __init__(self, x: torch.Tensor, shrink: float = 1.0):
        super().__init__()
        rows = x.reshape(len(x), -1).double()
        self.shape = tuple(x.shape[1:])
        self.register_buffer("mu", rows.mean(0))
        cov = torch.cov(rows.T)
        evals, evecs = torch.linalg.eigh(cov)
        self.register_buffer("evals", evals.clamp_min(0) * shrink)
        self.register_buffer("evecs", evecs)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(len(x), -1).double() - self.mu
        gain = self.evals / (self.evals + sigma.double().reshape(-1, 1) ** 2)  # per eigen-direction
        out = self.mu + ((flat @ self.evecs) * gain) @ self.evecs.T
        return out.to(x.dtype).reshape(x.shape)


def denoiser(device="cpu") -> nn.Module:
    """The factory for ``lossfloor diagnose --denoiser examples/edm_style_net.py:denoiser``."""
    return LinearEDMNet(load_dataset("digits").x).to(device)


def main(points: int = 256, queries: int = 512) -> dict:
    data = load_dataset("digits")
    objective = get_objective("edm")
    sigmas = torch.logspace(-2, 1.5, 12).tolist()
    curve = Estimator(data.rows(), EstimatorConfig(queries=queries)).curve(sigmas, seed=0, progress=False)
    validator = FloorValidator(data.x, curve, objective, points=points, seed=0)  # built once
    good, worse = validator(LinearEDMNet(data.x)), validator(LinearEDMNet(data.x, shrink=0.5))
    diff = worse.minus(good)
    print(f"linear denoiser: excess over the floor {good.excess:.4f} ± {good.excess_stderr:.4f} "
          f"({good.weight_coverage:.1%} of EDM's p(sigma) inside the grid)")
    print(f"half-variance linear denoiser - linear denoiser: {diff.excess:+.4f} ± {diff.excess_stderr:.4f} "
          "(paired, same draws)")
    for s, g, e in zip(good.sigma, good.gap, good.gap_stderr, strict=True):
        print(f"  sigma {s:8.4g}: gap {g:.5f} ± {e:.5f}")
    return {**good.scalars(), **diff.scalars()}


if __name__ == "__main__":
    main()
