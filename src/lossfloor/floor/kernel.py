"""The posterior kernel: softmax-weighted moments of a dataset around noisy queries.

For a query x~ = x0 + sigma * eps (VE coordinates) the posterior over the N data points is
softmax_n(-||x~ - x_n||^2 / 2 sigma^2).  Dropping the per-query constant ||x~||^2 the logits are
(x~ . x_n - ||x_n||^2 / 2) / sigma^2: one GEMM for the logits and one for the weighted sum, streamed
over chunks of the dataset with an online log-sum-exp.  The partial sums (max, sum exp, sum w x,
sum w ||x||^2) merge associatively, which is how chunks, and ranks of a distributed job, are combined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

F64 = torch.float64
DEFAULT_CHUNK = 4096  # data rows per GEMM: on the 2-core CPU 4096 ran faster than 8192 (benchmarks/kernel.py)



def rescale(log_max: Tensor, other_max: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The merged running maximum and the factors exp(max_i - merged) that bring two sets of sums scaled by
    exp(-max_i) to it (a query with no points on either side, max -inf, keeps factors of 0)."""
    new_max = torch.maximum(log_max, other_max)
    safe = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
    return new_max, torch.exp(log_max - safe), torch.exp(other_max - safe)


@dataclass
class PosteriorStats:
    """Unnormalised posterior sums, scaled by exp(-log_max) per query; merge with `merge`."""

    log_max: Tensor  # (M,) running maximum logit
    weight: Tensor  # (M,) sum_n exp(l_n - log_max)
    weighted_x: Tensor  # (M, D) sum_n exp(l_n - log_max) x_n
    weighted_sq: Tensor  # (M,) sum_n exp(l_n - log_max) ||x_n||^2

    def merge(self, other: PosteriorStats) -> PosteriorStats:
        """Combine sums over two disjoint sets of data points (log-sum-exp form)."""
        new_max, a, b = rescale(self.log_max, other.log_max)
        return PosteriorStats(
            new_max,
            a * self.weight + b * other.weight,
            a[:, None] * self.weighted_x + b[:, None] * other.weighted_x,
            a * self.weighted_sq + b * other.weighted_sq,
        )

    def mean(self) -> Tensor:
        """Posterior mean E[x0 | x~], shape (M, D)."""
        return self.weighted_x / self.weight[:, None]

    def second_moment(self) -> Tensor:
        """E[||x0||^2 | x~], shape (M,)."""
        return self.weighted_sq / self.weight

    def variance(self) -> Tensor:
        """tr Var(x0 | x~) = E[||x0||^2 | x~] - ||E[x0 | x~]||^2, clamped at 0 against round-off."""
        return (self.second_moment() - self.mean().pow(2).sum(1)).clamp_min(0)


def as_rows(rows, device, dtype) -> Tensor:
    """A block of rows (a tensor, or an array such as a memmap slice) as a tensor on `device` in `dtype`."""
    if isinstance(rows, np.ndarray):  # a copy: memmap slices are read-only, and read once anyway
        rows = torch.from_numpy(np.array(rows, order="C"))
    return rows.to(device=device, dtype=dtype)


def posterior_stats(
    queries: Tensor,
    data,
    sigma: float,
    *,
    shift: Tensor | None = None,
    self_index: Tensor | None = None,
    self_log_weight: float = 0.0,
    row_offset: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
    row_sq: Tensor | None = None,
) -> PosteriorStats:
    """Posterior sums of `queries` (M, D) against `data` rows (a tensor or an array-like such as a
    numpy memmap), computed in the queries' dtype on their device, accumulated in float64.

    shift: subtracted from every data row as it is read (centring keeps ||x||^2 small).
    self_index: per query, the global row index of its source; that pair's logit gets `self_log_weight`
    added (log(1/C) for cDOL, -inf to exclude it).  row_offset: global index of data[0].
    row_sq: the float64 squared norms of the (shifted) rows (`row_square_norms`), when the same rows serve
    many calls: computing them per call cost ~15% of the kernel's time.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    device, dtype = queries.device, queries.dtype
    m, d = queries.shape
    inv_var = 1.0 / (float(sigma) ** 2)
    q_scaled = queries * inv_var
    total = PosteriorStats(
        torch.full((m,), -torch.inf, dtype=F64, device=device),
        torch.zeros(m, dtype=F64, device=device),
        torch.zeros(m, d, dtype=F64, device=device),
        torch.zeros(m, dtype=F64, device=device),
    )
    if shift is not None:
        shift = shift.to(device=device, dtype=dtype)
    rows = min(chunk_size, len(data))
    centred = torch.empty(rows, d, device=device, dtype=dtype) if shift is not None else None
    block = torch.empty(min(_NORM_BLOCK, rows), d, device=device, dtype=F64)
    floor = exp_floor(dtype)
    # Reused buffers: fresh (M, chunk) tensors per chunk cost as much as the GEMMs did.
    logit_buffer = torch.empty(m * rows, device=device, dtype=dtype)
    w_buffer = torch.empty(m * rows, device=device, dtype=F64)
    for start in range(0, len(data), chunk_size):
        x = as_rows(data[start:start + chunk_size], device, dtype)
        if shift is not None:
            x = torch.sub(x, shift, out=centred[:len(x)])
        sq = _square_norms(x, block) if row_sq is None else row_sq[start:start + len(x)].to(device)
        # mm into the buffer, then the bias in place: addmm first copies the broadcast bias into a new
        # (M, chunk) tensor.
        logits = torch.mm(q_scaled, x.T, out=logit_buffer[:m * len(x)].view(m, len(x)))
        logits.add_((-0.5 * inv_var) * sq.to(dtype))
        if self_index is not None and self_log_weight != 0.0:
            local = self_index - (row_offset + start)
            hit = torch.nonzero((local >= 0) & (local < len(x))).flatten()
            logits[hit, local[hit]] += self_log_weight
        cmax = logits.amax(1)  # amax: max(1) also builds indices, and was ms per call on small tensors
        safe = torch.where(torch.isfinite(cmax), cmax, torch.zeros_like(cmax))
        # The floor keeps exp's arguments in the normal range: torch's CPU exp is ~17x slower where its
        # result underflows (below -87 in float32), which at small sigma is nearly every logit and cost as
        # much as the GEMMs.  A weight raised from below e^floor to e^floor changes each sum by at most
        # N e^floor of its largest term (< 1e-33 in float32).
        w = logits.sub_(safe[:, None])
        if floor is not None:
            w.clamp_(min=floor)
        w.exp_()
        # Sum w and sum w ||x||^2 in float64 (one GEMV pass over the weights), as E||x||^2 - ||E x||^2
        # cancels; in a one-hot posterior the variance is then exactly 0.
        w64 = w_buffer[:m * len(x)].view(m, len(x)).copy_(w)
        sums = w64 @ torch.stack((torch.ones_like(sq), sq), 1)
        chunk = PosteriorStats(cmax.to(F64), sums[:, 0], (w @ x).to(F64), sums[:, 1])
        total = total.merge(chunk)
    return total


_NORM_BLOCK = 256


def exp_floor(dtype: torch.dtype) -> float | None:
    """The lowest exp argument kept in `dtype`'s normal range (log of its smallest normal number, plus 1),
    or None where that floor would be above -50 (half precision), where raising weights would matter."""
    floor = math.log(torch.finfo(dtype).tiny) + 1.0
    return floor if floor < -50 else None


def row_square_norms(data: Tensor, shift: Tensor | None = None, dtype=torch.float32,
                     chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """float64 squared norms of the rows as `posterior_stats` computes them (cast to `dtype`, shifted)."""
    out = []
    block = torch.empty(min(_NORM_BLOCK, len(data)), data.shape[1], device=data.device, dtype=F64)
    for start in range(0, len(data), chunk_size):
        x = data[start:start + chunk_size].to(dtype)
        if shift is not None:
            x = x - shift.to(device=x.device, dtype=dtype)
        out.append(_square_norms(x, block))
    return torch.cat(out)


def _square_norms(x: Tensor, block: Tensor) -> Tensor:
    """Row norms squared in float64, converting `len(block)` rows at a time into a reused buffer."""
    out = torch.empty(len(x), dtype=F64, device=x.device)
    for first in range(0, len(x), len(block)):
        rows = x[first:first + len(block)]
        part = block[:len(rows)].copy_(rows)
        torch.sum(part.mul_(part), 1, out=out[first:first + len(rows)])
    return out



# -- exact pruning at small sigma -----------------------------------------------------------------

PRUNE_MARGIN = 40.0  # log-weight margin: points pruned together weigh < N e^-(log N + 40) of the source


@dataclass
class Projection:
    """A k-dimensional orthonormal projection of a dataset (in memory): ||P(q - x)|| <= ||q - x||."""

    basis: Tensor  # (D, k), orthonormal columns
    projected: Tensor  # (N, k) float64, the projected (shifted) rows

    @classmethod
    def of(cls, data: Tensor, shift: Tensor | None = None, k: int = 32, seed: int = 0) -> Projection:
        """The top-k principal directions of the (shifted) rows, by a randomised SVD in float32 (any
        directions serve; orthonormalised in float64, which is what the bound needs)."""
        x = (data if shift is None else data - shift).double()
        k = min(k, x.shape[1], x.shape[0])
        index = torch.cuda.current_device() if x.is_cuda and x.device.index is None else x.device.index
        cuda = [index] if x.is_cuda else []
        with torch.random.fork_rng(devices=cuda):  # pca_lowrank draws from the global generators
            torch.manual_seed(seed)
            _, _, v = torch.pca_lowrank(x.float(), q=k, center=False)
        basis, _ = torch.linalg.qr(v.double())
        return cls(basis, x @ basis)


def candidate_rows(queries: Tensor, reference_sq: Tensor, proj: Projection, sigma: float,
                   shift: Tensor | None = None, chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """Indices of the data rows that can matter to any query: those whose projected squared distance (a
    lower bound of the true one) is within 2 sigma^2 (log N + PRUNE_MARGIN) of the query's
    `reference_sq`, an upper bound of its nearest squared distance (e.g. to its source)."""
    q = (queries if shift is None else queries - shift.to(queries)).double() @ proj.basis.to(queries.device)
    q_sq = q.pow(2).sum(1)
    n = len(proj.projected)
    slack = 2 * sigma**2 * (math.log(n) + PRUNE_MARGIN)
    keep = []
    for start in range(0, n, chunk_size):
        z = proj.projected[start:start + chunk_size].to(q.device)
        z_sq = z.pow(2).sum(1)
        lower = q_sq[:, None] + z_sq[None, :] - 2 * q @ z.T
        lower -= 1e-9 * (q_sq[:, None] + z_sq[None, :])  # float64 rounding of the expansion, conservatively
        hit = (lower <= reference_sq.double()[:, None] + slack).any(0)
        keep.append(torch.nonzero(hit).flatten() + start)
    return torch.cat(keep)
