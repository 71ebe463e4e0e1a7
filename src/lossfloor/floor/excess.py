"""The objective-weighted excess over the floor: one scalar from per-level gaps, in one place.

`FloorValidator` (evaluate/validation.py), `GapMonitor` (train/monitor.py) and the trainer's logs report the
same number: sum_k w_k gap(sigma_k), with w_k the weight lambda(sigma) p(log sigma) d log sigma of the
objective integrated against the piecewise-linear (in log sigma) interpolation of the gap between the grid's
levels (`grid_weights`).  Noise levels outside the grid are not counted: ``coverage`` is the share of
p(sigma) (or of the atoms) inside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lossfloor.objective.objective import Objective

MESH = 2001  # quadrature nodes between the grid's ends (plus the grid's own levels)


def grid_weights(objective: Objective, sigmas) -> tuple[np.ndarray, float]:
    """(w_k, coverage): sum_k w_k g(sigma_k) integrates lambda(sigma) p(log sigma) g over the grid's range
    for g piecewise linear in log sigma between the levels; coverage is the share of p(sigma) (or of the
    atoms) inside that range."""
    grid = np.log(np.asarray(sigmas, dtype=float))
    if objective.is_discrete:
        ls = np.log(objective.atoms().numpy())
        inside = (ls >= grid[0]) & (ls <= grid[-1])
        ls, coef, coverage = ls[inside], np.full(int(inside.sum()), 1.0 / len(inside)), float(inside.mean())
    else:
        ls = np.union1d(np.linspace(grid[0], grid[-1], MESH), grid)
        logp = objective.log_density(torch.tensor(ls)).numpy()
        h = np.diff(ls)
        coef = np.where(np.isfinite(logp), np.exp(logp), 0.0) * (np.r_[h, 0.0] + np.r_[0.0, h]) / 2
        cdf = objective.cdf(torch.tensor([grid[0], grid[-1]])).numpy()
        coverage = float(cdf[1] - cdf[0])
    lam = objective.x0_weight(torch.tensor(np.exp(ls))).numpy()
    coef = coef * np.where(coef > 0, lam, 0.0)  # lambda may be infinite where p vanishes
    hats = np.stack([np.interp(ls, grid, row) for row in np.eye(len(grid))])
    return hats @ coef, coverage


@dataclass(frozen=True)
class Excess:
    """sum_k w_k gap_k with its standard error (independent levels) and the grid's coverage of p(sigma)."""

    value: float
    stderr: float
    coverage: float
    weights: np.ndarray


def weighted_excess(objective: Objective, sigmas, gaps, stderr=None) -> Excess:
    """The objective-weighted excess of per-level `gaps` (per dimension) at the increasing `sigmas`; with
    per-level standard errors of independent levels, its standard error (else nan).  Fewer than 2 levels:
    nan (no interval to integrate over)."""
    sigmas, gaps = np.asarray(sigmas, dtype=float), np.asarray(gaps, dtype=float)
    if len(sigmas) < 2:
        return Excess(math.nan, math.nan, 0.0, np.zeros(len(sigmas)))
    w, coverage = grid_weights(objective, sigmas)
    se = math.nan if stderr is None else float(np.sqrt(np.sum((w * np.asarray(stderr, dtype=float)) ** 2)))
    return Excess(float(w @ gaps), se, coverage, w)
