"""A top-k posterior: the softmax over only the k nearest training rows of each noisy query.

This is how Analytic Diffusion Studio computes its "optimal" denoiser: a FAISS flat (exhaustive L2) index
returns the exact k nearest rows of x~, and the softmax of -||x~ - x_n||^2 / 2 sigma^2 runs over those k
only.  `benchmarks/topk.py` measures what that truncation does to J*(sigma) against the exact posterior.

`nearest_rows` is the exhaustive search (float32 GEMMs of ||x||^2 - 2 x~ . x, as IndexFlatL2 does, chunked
over the rows with a running top-k); `topk_posterior` gathers each query's k rows and forms the same
`PosteriorStats` as `floor.kernel.posterior_stats` (logits (x~ . x - ||x||^2 / 2) / sigma^2 in the queries'
dtype, with the float64 row norms of `row_square_norms`; sums of w and w ||x||^2 in float64), so with
k = N it is the exact posterior up to the order of summation.  As in the kernel, queries are in the
coordinates of the shifted rows (x~ - shift) and `shift` is subtracted from every row.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lossfloor.floor.kernel import DEFAULT_CHUNK, F64, PosteriorStats, row_square_norms

GATHER_ELEMENTS = 1 << 23  # gathered row entries per batch of queries (64 MiB of float64)


def nearest_rows(queries: Tensor, rows: Tensor, k: int, *, shift: Tensor | None = None,
                 row_sq: Tensor | None = None, chunk_size: int = DEFAULT_CHUNK) -> tuple[Tensor, Tensor]:
    """(squared distances up to a per-query constant, row indices), each (M, k), nearest first: the exact
    k nearest rows of every query by Euclidean distance (ties broken by torch.topk)."""
    n = len(rows)
    k = min(k, n)
    dtype = queries.dtype
    if row_sq is None:
        row_sq = row_square_norms(rows, shift, dtype, chunk_size)
    best_d = torch.empty(len(queries), 0, dtype=dtype, device=queries.device)
    best_i = torch.empty(len(queries), 0, dtype=torch.long, device=queries.device)
    for start in range(0, n, chunk_size):
        x = rows[start:start + chunk_size].to(device=queries.device, dtype=dtype)
        if shift is not None:
            x = x - shift.to(x)
        d = row_sq[start:start + len(x)].to(device=queries.device, dtype=dtype) - 2.0 * (queries @ x.T)
        idx = torch.arange(start, start + len(x), device=queries.device).expand(len(queries), -1)
        d, idx = torch.cat((best_d, d), 1), torch.cat((best_i, idx), 1)
        best_d, pick = torch.topk(d, min(k, d.shape[1]), dim=1, largest=False, sorted=True)
        best_i = torch.gather(idx, 1, pick)
    return best_d, best_i


def topk_posterior(queries: Tensor, rows: Tensor, sigma: float, k: int, *, shift: Tensor | None = None,
                   row_sq: Tensor | None = None, chunk_size: int = DEFAULT_CHUNK,
                   neighbours: Tensor | None = None) -> PosteriorStats:
    """Posterior sums of `queries` (M, D) over each one's k nearest `rows` only (`nearest_rows`, or the
    given `neighbours` indices (M, k)); `.variance()` / D is the top-k J* per query."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    dtype = queries.dtype
    if row_sq is None:
        row_sq = row_square_norms(rows, shift, dtype, chunk_size)
    if neighbours is None:
        _, neighbours = nearest_rows(queries, rows, k, shift=shift, row_sq=row_sq, chunk_size=chunk_size)
    m, kk = neighbours.shape
    d = queries.shape[1]
    inv_var = 1.0 / float(sigma) ** 2
    batch = max(1, GATHER_ELEMENTS // max(1, kk * d))
    parts = []
    for i in range(0, m, batch):
        idx = neighbours[i:i + batch]
        x = rows[idx.to(rows.device)].to(device=queries.device, dtype=dtype)  # (B, k, D)
        if shift is not None:
            x = x - shift.to(x)
        sq = row_sq.to(queries.device)[idx]  # (B, k) float64
        q = queries[i:i + batch]
        logits = torch.bmm(x, (q * inv_var).unsqueeze(2)).squeeze(2) - (0.5 * inv_var) * sq.to(dtype)
        top = logits.amax(1)
        w = torch.exp(logits - top[:, None])
        w64 = w.to(F64)
        parts.append(PosteriorStats(top.to(F64), w64.sum(1), torch.bmm(w.unsqueeze(1), x).squeeze(1).to(F64),
                                    (w64 * sq).sum(1)))
    return PosteriorStats(*(torch.cat([getattr(p, f) for p in parts]) for f in
                            ("log_max", "weight", "weighted_x", "weighted_sq")))


def log_partition(stats: PosteriorStats) -> Tensor:
    """log sum_n exp(logit_n) per query: exp(top-k's - exact's) is the exact posterior mass the k rows hold
    (both with the kernel's logits)."""
    return stats.log_max + torch.log(stats.weight)
