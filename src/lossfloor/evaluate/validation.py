"""A floor-referenced validation loss for any denoiser: `FloorValidator`.

Built once from the training data, its J*(sigma) curve, the objective, a fixed sigma grid and a seed, it
holds fixed evaluation draws -- `points` data rows, one noise vector per row used at every level -- and,
by default, the optimal denoiser on exactly those draws (the posterior mean mu(x~) over the training
rows, `evaluate.posterior`).  Called on any ``denoise(x_noisy, sigma) -> x0_hat`` (EDM / k-diffusion
convention; `evaluate.adapters` turns epsilon-, v- and flow-networks into one) it returns per level

- the gap to the floor, E ||x0_hat - x0||^2 / D - J*(sigma), estimated draw by draw as
  ||x0_hat - mu(x~)||^2 / D: given x~ the expected loss of x0_hat is tr Var(x0 | x~) / D plus that term,
  so the estimate is unbiased, never negative and much less noisy than a loss minus J* (``same_draw=False``
  uses the raw loss minus the curve's J*(sigma) instead, with the curve's standard error);
- the raw loss ||x0_hat - x0||^2 / D and the curve's J*(sigma), for reference;

and one scalar, ``excess``: the objective-weighted gap sum_k w_k gap(sigma_k), with w_k the weight
lambda(sigma) p(log sigma) d log sigma of the objective integrated against the piecewise-linear (in log
sigma) interpolation of the gap between the grid's levels (`floor.excess.grid_weights`, shared with
`GapMonitor` and the trainer's logs; noise levels outside the grid are not counted -- ``weight_coverage``
is the share of p(sigma) inside it).  Every call uses the same draws,
so `ValidationResult.minus` gives paired differences between two checkpoints with standard errors, and
two calls on the same model give identical numbers.  `ValidationResult.scalars` is a flat dict for
TensorBoard or Weights & Biases.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from lossfloor.core.errors import InputError
from lossfloor.evaluate.posterior import posterior_moments
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.floor.excess import grid_weights
from lossfloor.nets.denoiser import per_sample_x0_loss
from lossfloor.objective.objective import Objective


@dataclass(frozen=True)
class PairedDifference:
    """result a - result b on the same draws: per level and for the scalar, with standard errors."""

    sigma: np.ndarray
    gap: np.ndarray
    gap_stderr: np.ndarray
    excess: float
    excess_stderr: float

    def scalars(self, prefix: str = "floor_diff/") -> dict[str, float]:
        out = {f"{prefix}excess": self.excess, f"{prefix}excess_se": self.excess_stderr}
        for s, g, e in zip(self.sigma, self.gap, self.gap_stderr, strict=True):
            out[f"{prefix}gap/sigma_{s:.4g}"], out[f"{prefix}gap_se/sigma_{s:.4g}"] = float(g), float(e)
        return out


@dataclass(frozen=True)
class ValidationResult:
    """One denoiser on a validator's draws (`FloorValidator.__call__`)."""

    sigma: np.ndarray
    gap: np.ndarray  # per level: model loss - J*(sigma), per dimension
    gap_stderr: np.ndarray
    loss: np.ndarray  # per level: raw ||x0_hat - x0||^2 / D
    loss_stderr: np.ndarray
    floor: np.ndarray  # J*(sigma) from the curve
    excess: float  # sum_k w_k gap_k: the objective-weighted excess over the floor
    excess_stderr: float
    weight_coverage: float
    key: str  # which validator (draws) produced it
    draws: np.ndarray = field(repr=False)  # (levels, points) per-draw gap values
    weights: np.ndarray = field(repr=False)  # w_k of the scalar

    def scalars(self, prefix: str = "floor/") -> dict[str, float]:
        """A flat {name: float} dict (e.g. ``writer.add_scalar(k, v, step)`` for each item, or
        ``wandb.log(result.scalars(), step=step)``)."""
        out = {f"{prefix}excess": self.excess, f"{prefix}excess_se": self.excess_stderr}
        for k, s in enumerate(self.sigma):
            name = f"sigma_{s:.4g}"
            out[f"{prefix}gap/{name}"] = float(self.gap[k])
            out[f"{prefix}gap_se/{name}"] = float(self.gap_stderr[k])
            out[f"{prefix}loss/{name}"] = float(self.loss[k])
        return out

    def minus(self, other: ValidationResult) -> PairedDifference:
        """self - other, paired draw by draw (both from the same validator)."""
        if self.key != other.key:
            raise ValueError("paired differences need two results of the same validator (same draws)")
        d = self.draws - other.draws
        n = d.shape[1]
        scalar = self.weights @ d
        return PairedDifference(self.sigma, d.mean(1), d.std(1, ddof=1) / math.sqrt(n), float(scalar.mean()),
                                float(scalar.std(ddof=1) / math.sqrt(n)))


class FloorValidator:
    """Fixed draws and the floor on them; call it on a denoiser (see the module docstring).

    x: the training data (N, ...) the curve was computed on (the floor is the posterior over these rows);
    sigmas: the grid (default: the curve's levels); points: data rows drawn once (all rows if fewer);
    same_draw: subtract the optimal denoiser draw by draw (default) or the curve's J*(sigma).
    """

    def __init__(self, x: Tensor, curve: OptimalLossCurve, objective: Objective, sigmas=None, *,
                 points: int = 512, seed: int = 0, same_draw: bool = True, batch_size: int = 256,
                 device: str | torch.device = "cpu"):
        x = torch.as_tensor(x)
        dim = x[0].numel() if len(x) else 0
        if len(x) < 2 or dim != curve.dim:
            raise InputError(f"the data ({len(x)} rows of dimension {dim}) do not match the curve "
                             f"(dimension {curve.dim}); give the training data J* was computed on")
        self.sigma = np.asarray(curve.sigma if sigmas is None else sigmas, dtype=float)
        if len(self.sigma) < 2 or np.any(np.diff(self.sigma) <= 0) or self.sigma[0] <= 0:
            raise InputError("the validation grid needs at least 2 increasing positive noise levels")
        self.objective, self.curve, self.seed = objective, curve, seed
        self.same_draw, self.batch_size, self.device = same_draw, batch_size, torch.device(device)
        self.weights, self.weight_coverage = grid_weights(objective, self.sigma)
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(x), generator=gen)[:points].sort().values if points < len(x) else \
            torch.arange(len(x))
        self.x0 = x[idx].float()
        self.eps = torch.randn(self.x0.shape, generator=gen)
        self.floor = np.asarray(curve(self.sigma), dtype=float)
        self.floor_stderr = np.interp(np.log(self.sigma), np.log(curve.sigma), curve.stderr)
        self.means = None
        if same_draw:
            rows = x.reshape(len(x), -1)
            self.means = [posterior_moments(rows, self.x0, float(s), self.eps)["mean"].float()
                          for s in self.sigma]
        digest = hashlib.sha256(repr((seed, self.sigma.tolist(), idx.tolist(), same_draw, tuple(x.shape),
                                      float(x.double().sum()))).encode())
        self.key = digest.hexdigest()[:16]

    @torch.no_grad()
    def _outputs(self, denoise: Callable, sigma: float) -> Tensor:
        out = []
        for i in range(0, len(self.x0), self.batch_size):
            x0 = self.x0[i:i + self.batch_size].to(self.device)
            noisy = x0 + sigma * self.eps[i:i + self.batch_size].to(self.device)
            s = torch.full((len(x0),), sigma, dtype=x0.dtype, device=self.device)
            x_hat = denoise(noisy, s)
            if tuple(x_hat.shape) != tuple(noisy.shape):
                raise ValueError(f"the denoiser returned shape {tuple(x_hat.shape)} for input "
                                 f"{tuple(noisy.shape)}; expected x0_hat of the input's shape")
            out.append(x_hat.detach().reshape(len(x0), -1).cpu())
        return torch.cat(out)

    def __call__(self, denoise: Callable) -> ValidationResult:
        """Evaluate ``denoise(x_noisy, sigma) -> x0_hat`` on the fixed draws."""
        draws, raw = [], []
        for k, s in enumerate(self.sigma):
            x_hat = self._outputs(denoise, float(s))
            raw_k = per_sample_x0_loss(x_hat, self.x0.reshape(len(self.x0), -1))
            raw.append(raw_k.numpy())
            if self.means is not None:
                draws.append(per_sample_x0_loss(x_hat, self.means[k]).numpy())
            else:
                draws.append(raw_k.numpy() - self.floor[k])
        draws, raw = np.stack(draws), np.stack(raw)
        n = draws.shape[1]
        se = draws.std(1, ddof=1) / math.sqrt(n)
        scalar = self.weights @ draws
        scalar_se = float(scalar.std(ddof=1) / math.sqrt(n))
        if self.means is None:  # the curve's J* is an estimate too
            se = np.hypot(se, self.floor_stderr)
            scalar_se = math.hypot(scalar_se, float(np.sqrt(np.sum((self.weights * self.floor_stderr) ** 2))))
        return ValidationResult(self.sigma, draws.mean(1), se, raw.mean(1),
                                raw.std(1, ddof=1) / math.sqrt(n), self.floor, float(scalar.mean()),
                                scalar_se, self.weight_coverage, self.key, draws, self.weights)
