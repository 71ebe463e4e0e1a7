"""OptimalLossCurve: J*(sigma) on a log-sigma grid, with standard errors, totals and JSON I/O."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .formulation import Objective

# Beyond the grid J* is extended by J(sigma_min) (sigma/sigma_min)^2 below (the small-noise behaviour
# of a smooth density; for a finite dataset J* decays even faster) and by the data variance above.
TAIL_DECADES = 6.0
MASS_TOLERANCE = 1e-6


@dataclass(frozen=True)
class TotalLoss:
    """An objective's total optimal loss E_p[lambda J*] (per dimension) with its standard error.

    extrapolated: the part of the value that comes from beyond the sigma grid.
    """

    value: float
    stderr: float
    extrapolated: float


@dataclass
class OptimalLossCurve:
    """The per-dimension optimal x0 loss J*(sigma) of one dataset in VE coordinates."""

    sigma: np.ndarray
    loss: np.ndarray
    stderr: np.ndarray
    data_variance: float
    n: int
    dim: int
    settings: dict = field(default_factory=dict)
    fingerprint: str = ""

    def __post_init__(self):
        self.sigma = np.asarray(self.sigma, dtype=float)
        self.loss = np.asarray(self.loss, dtype=float)
        self.stderr = np.asarray(self.stderr, dtype=float)
        if not (len(self.sigma) == len(self.loss) == len(self.stderr)) or len(self.sigma) == 0:
            raise ValueError("sigma, loss and stderr must be non-empty and of equal length")
        if np.any(np.diff(self.sigma) <= 0):
            order = np.argsort(self.sigma)
            self.sigma, self.loss, self.stderr = self.sigma[order], self.loss[order], self.stderr[order]

    # -- evaluation ------------------------------------------------------------------------
    def _basis(self, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """J*(sigma) = B @ loss + c: linear in the grid values, so errors propagate exactly."""
        ls, grid = np.log(np.asarray(sigma, dtype=float)), np.log(self.sigma)
        basis = np.stack([np.interp(ls, grid, np.eye(len(grid))[i]) for i in range(len(grid))], 1)
        const = np.zeros(len(ls))
        below, above = ls < grid[0], ls > grid[-1]
        basis[below] = 0.0
        basis[below, 0] = np.exp(2 * (ls[below] - grid[0]))
        basis[above] = 0.0
        const[above] = self.data_variance
        return basis, const

    def __call__(self, sigma) -> np.ndarray:
        """J*(sigma), interpolated linearly in log sigma and extended beyond the grid."""
        scalar = np.ndim(sigma) == 0
        basis, const = self._basis(np.atleast_1d(sigma))
        out = basis @ self.loss + const
        return out[0] if scalar else out

    def total(self, objective: Objective) -> TotalLoss:
        """The objective's optimal loss E_{p(sigma)}[lambda(sigma) J*(sigma)] per dimension."""
        grid = np.log(self.sigma)
        lo, hi = grid[0] - TAIL_DECADES * math.log(10), grid[-1] + TAIL_DECADES * math.log(10)
        if objective.is_discrete:
            sig = objective.atoms().numpy()
            coef = np.full(len(sig), 1.0 / len(sig))
            ls = np.log(sig)
            if ls.min() < lo or ls.max() > hi:
                raise ValueError(f"{objective.name}: noise levels outside [{math.exp(lo):.3g}, {math.exp(hi):.3g}]")
        else:
            mass = objective.cdf(torch.tensor(lo)).item() + 1 - objective.cdf(torch.tensor(hi)).item()
            if mass > MASS_TOLERANCE:
                raise ValueError(
                    f"{objective.name}: {mass:.2g} of the noise density lies outside sigma in "
                    f"[{math.exp(lo):.3g}, {math.exp(hi):.3g}]; widen the sigma grid")
            ls = np.linspace(lo, hi, 8001)
            logp = objective.log_density(torch.tensor(ls)).numpy()
            coef = np.where(np.isfinite(logp), np.exp(logp), 0.0) * np.gradient(ls)
            sig = np.exp(ls)
        lam = np.nan_to_num(objective.x0_weight(torch.tensor(sig)).numpy(), nan=0.0, posinf=0.0)
        coef = coef * lam
        basis, const = self._basis(sig)
        inside = (ls >= grid[0]) & (ls <= grid[-1])
        value = coef @ (basis @ self.loss + const)
        outside = coef[~inside] @ (basis[~inside] @ self.loss + const[~inside])
        stderr = math.sqrt(float(np.sum((coef @ basis) ** 2 * self.stderr**2)))
        return TotalLoss(float(value), stderr, float(outside))

    def critical_sigma(self, fraction: float = 0.01) -> float:
        """The smallest grid sigma where J* exceeds `fraction` of the data variance (nan if none)."""
        above = np.nonzero(self.loss > fraction * self.data_variance)[0]
        return float(self.sigma[above[0]]) if len(above) else math.nan

    # -- I/O ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("sigma", "loss", "stderr"):
            d[k] = [float(v) for v in d[k]]
        d["critical_sigma"] = self.critical_sigma()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "OptimalLossCurve":
        keys = ("sigma", "loss", "stderr", "data_variance", "n", "dim", "settings", "fingerprint")
        missing = [k for k in keys[:6] if k not in d]
        if missing:
            raise ValueError(f"not an optimal-loss curve: missing {', '.join(missing)}")
        return cls(**{k: d[k] for k in keys if k in d})

    def save(self, path, **extra) -> None:
        """Write JSON atomically (temporary file, then rename); `extra` keys are added."""
        atomic_write_text(path, json.dumps({**self.to_dict(), **extra}, indent=1))

    @classmethod
    def load(cls, path) -> "OptimalLossCurve":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a valid curve JSON ({err})") from err


def atomic_write_text(path, text: str) -> None:
    """Write text to `path` through a temporary file in the same folder, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
