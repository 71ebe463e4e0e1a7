"""An upper bound on J* at a level where every sampled query reads 0 (its reported stderr)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lossfloor.floor.kernel import (
    DEFAULT_CHUNK,
    as_rows,
)
from lossfloor.floor.matrix import DataMatrix

ZERO_BOUND_SOURCES = 256  # sources behind an all-zero level's bound (each costs a pass over the data)


def spread_sample(idx: Tensor, k: int) -> Tensor:
    """At most k entries of idx, evenly spaced (a systematic sample)."""
    return idx if len(idx) <= k else idx[torch.linspace(0, len(idx) - 1, k).round().long()]


def zero_level_bound(data: DataMatrix, sources: Tensor, sigma: float,
                     chunk_size: int = DEFAULT_CHUNK) -> float:
    """An upper bound of J*(sigma) per dimension, estimated from sampled sources (mean + 3 standard errors):
    tr Var(x0 | x~) <= sum_n w_n ||x_n - x_s||^2 and E_eps[min(1, w_n / w_s)] = 2 Phi(-d_n / 2 sigma) for a
    query x~ = x_s + sigma eps, so J* <= E_s sum_{n != s} d_sn^2 2 Phi(-d_sn / 2 sigma) / D.

    The pairs are screened by their projected distance (a lower bound) where pruning built a projection, else
    by a float32 GEMM (with a margin for its rounding); the terms of the pairs within reach are computed in
    float64.  A pair out of reach has erfc(d / 2 sqrt(2) sigma) < erfc(26.5) ~ 1e-307: together
    they change the bound by less than N max d^2 1e-307, below float64's resolution of any bound we report."""
    rows, shift = data.kernel_rows  # centred once in memory (with their norms, `row_sq`), on disk per chunk
    row_sq = data.row_sq
    x_s = data.centered_rows(sources)
    x_s64 = x_s.double()
    sq_s = x_s64.pow(2).sum(1)
    scale = 1.0 / (2 * math.sqrt(2) * sigma)  # 2 Phi(-d / 2 sigma) = erfc(d scale); ndtr is 0 below -9
    reach = (26.5 / scale) ** 2
    rounding = (data.dim + 4) * torch.finfo(x_s.dtype).eps  # of the screen's d^2, relative to sq_s + sq
    proj = data.projection if isinstance(data.rows, Tensor) else None  # built by pruning, if it ran
    if proj is not None:
        z_s = proj.projected[sources.to(proj.projected.device)].to(x_s.device)
        z_s_sq = z_s.pow(2).sum(1)
    total = torch.zeros(len(sources), dtype=torch.float64, device=x_s.device)
    screening = True  # until a chunk shows that most pairs are within reach (large sigma)
    for start in range(0, data.n, chunk_size):
        x = as_rows(rows[start:start + chunk_size], x_s.device, x_s.dtype)
        if shift is not None:
            x = x - shift.to(x)
        sq = x.double().pow(2).sum(1) if row_sq is None else row_sq[start:start + len(x)].to(x.device)
        norms = sq_s[:, None] + sq[None, :]
        near = torch.arange(len(x), device=x.device)
        if screening and proj is not None:  # the projected distance, a lower bound (`kernel.Projection`)
            z = proj.projected[start:start + len(x)].to(x.device)
            z_sq = z.pow(2).sum(1)
            lower = torch.addmm(z_s_sq[:, None] + z_sq[None, :], z_s, z.T, alpha=-2)
            near = torch.nonzero((lower - 1e-9 * (z_s_sq[:, None] + z_sq[None, :]) <= reach).any(0)).flatten()
        elif screening:
            screen = torch.addmm(norms.to(x.dtype), x_s, x.T, alpha=-2).double()
            near = torch.nonzero((screen - rounding * norms <= reach).any(0)).flatten()
        screening = screening and len(near) < len(x) // 2
        if len(near):
            d2 = torch.addmm(norms[:, near], x_s64, x[near].double().T, alpha=-2).clamp_min_(0)
            total += (d2 * torch.special.erfc(d2.sqrt().mul_(scale))).sum(1)
    per = total.cpu() / data.dim  # the source itself has d = 0 and adds nothing
    spread = per.std().item() / math.sqrt(len(per)) if len(per) > 1 else per.item()
    return per.mean().item() + 3 * spread
