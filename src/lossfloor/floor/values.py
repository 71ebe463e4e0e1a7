"""Per-query values at one level: over all rows (with exact pruning), over random subsets (the self-pair's
weight divided by C) and over fixed row blocks (control variates); `strategies` calls them."""

from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
from torch import Tensor

from lossfloor.floor.config import (
    FORMS,
    EstimatorConfig,
    stratified_sources,
    subset_block_size,
)
from lossfloor.floor.distributed import sharded_posterior_stats
from lossfloor.floor.kernel import (
    Projection,
    candidate_rows,
    posterior_stats,
)
from lossfloor.floor.matrix import DataMatrix


def clamped(value: float, sigma: float, form: str) -> float:
    """J* >= 0; the global form A - B can come out negative from Monte-Carlo cancellation: clamp, warn."""
    if not math.isfinite(value):
        raise FloatingPointError(f"non-finite J* estimate {value} at sigma = {sigma:.6g}")
    if value < 0:
        cause = "of A - B" if form == "global" else f"in the {form} estimate"
        warnings.warn(f"the {form} estimate gave J* = {value:.3g} < 0 at sigma = {sigma:.6g} (Monte-Carlo "
                      f"cancellation {cause}); clamped to 0, its standard error kept", stacklevel=3)
        return 0.0
    return value


def query_value(stats, data: DataMatrix, form: str) -> Tensor:
    """Per-query values of `form` (a `FORMS` entry), per dimension."""
    return FORMS[form](stats, data) / data.dim


def noisy(x_src: Tensor, sigma: float, generator: torch.Generator, with_noise: bool = False):
    """Queries x_src + sigma eps (and eps, float64 on the CPU, with `with_noise`)."""
    # Noise is drawn on the CPU in float64 so results do not depend on the device or dtype.
    eps = torch.randn(x_src.shape, generator=generator, dtype=torch.float64)
    queries = x_src + (sigma * eps).to(device=x_src.device, dtype=x_src.dtype)
    return (queries, eps) if with_noise else queries


def full_values(data: DataMatrix, sigma: float, config: EstimatorConfig, generator: torch.Generator, progress,
                control: list[Tensor] | None = None):
    """Per-query values and their sources; with `control` (disjoint row blocks), also each query's values
    over the first 1, 2, ... blocks (`subset_posterior_values`) and its control features (`_features`)."""
    sources = stratified_sources(data.n, config.queries, generator)
    out, controls = [], []
    features = []
    for idx in sources.split(config.batch_size):
        x_src = data.centered_rows(idx)
        queries, eps = noisy(x_src, sigma, generator, with_noise=True)
        rows = _pruned_rows(data, queries, x_src, sigma, config) if config.prune else None
        kernel_rows, shift = data.kernel_rows
        if rows is not None:
            stats = posterior_stats(queries, kernel_rows[rows], sigma, shift=shift,
                                    chunk_size=config.chunk_size, row_sq=data.row_sq[rows])
        else:
            stats = sharded_posterior_stats(queries, kernel_rows, sigma, shift=shift,
                                            chunk_size=config.chunk_size, row_sq=data.row_sq)
        out.append(query_value(stats, data, config.form).cpu())
        if control is not None:
            controls.append(subset_posterior_values(queries, control, sigma, data, config))
            features.append(_features(x_src, eps, data))
        if progress is not None:
            progress(len(idx))
    if control is not None:
        return (torch.cat(out), sources, [torch.cat(c) for c in zip(*controls, strict=True)],
                torch.cat(features))
    return torch.cat(out), sources


def _pruned_rows(data: DataMatrix, queries: Tensor, x_src: Tensor, sigma: float, config) -> Tensor | None:
    """The rows that can matter to these queries (`kernel.candidate_rows`, the source distance as the
    reference), or None where pruning does not apply (rows on disk, several ranks) or keeps half or more.
    Once it keeps half or more at some sigma it is not tried again at that sigma or above (it can only keep
    more there), as the bound itself costs a pass over the projected rows."""
    if not isinstance(data.rows, Tensor) or (dist.is_available() and dist.is_initialized()):
        return None
    if sigma >= data.prune_fails_from:
        return None
    if data.projection is None:
        data.projection = Projection.of(data.rows, data.center)
    reference = (queries.double() - x_src.double()).pow(2).sum(1)
    rows = candidate_rows(queries, reference, data.projection, sigma, chunk_size=config.chunk_size)
    if len(rows) >= data.n // 2:
        data.prune_fails_from = min(data.prune_fails_from, sigma)
        return None
    return rows.to(data.rows.device)


def subset_values(data: DataMatrix, sigma: float, config: EstimatorConfig, self_weight: float,
                  generator: torch.Generator, progress) -> tuple[Tensor, int]:
    """Per-query values over random subsets of L rows that hold the query's source, the self-pair's kernel
    weight divided by `self_weight` (C), and the queries per subset (consecutive values share one)."""
    size = config.subset_size(data.n)
    log_w = -math.log(self_weight)
    per_block = subset_block_size(config, data.n)
    blocks = math.ceil(config.queries / per_block)
    out = []
    for _ in range(blocks):
        members = torch.randperm(data.n, generator=generator)[:size]
        subset = data.centered_rows(members)
        for first in range(0, per_block, config.batch_size):
            local = torch.arange(first, min(per_block, first + config.batch_size))
            queries = noisy(subset[local], sigma, generator)
            stats = sharded_posterior_stats(queries, subset, sigma, self_index=local.to(data.device),
                                            self_log_weight=log_w, chunk_size=config.chunk_size)
            out.append(query_value(stats, data, config.form).cpu())
            if progress is not None:
                progress(len(local))
    return torch.cat(out), per_block


def _features(x_src: Tensor, eps: Tensor, data: DataMatrix) -> Tensor:
    """Per-query control features of known mean 0 (sources uniform over the data, eps ~ N(0, I) independent
    of them): x_s . eps, ||x_s||^2 - E||x_s||^2 (the centred mean square) and ||eps||^2 - D."""
    x = x_src.double().cpu()
    return torch.stack(((x * eps).sum(1), x.pow(2).sum(1) - data.mean_sq, eps.pow(2).sum(1) - data.dim), 1)


def subset_posterior_values(queries: Tensor, blocks: list[Tensor], sigma: float, data: DataMatrix,
                             config: EstimatorConfig) -> list[Tensor]:
    """Per-query values over the first 1, 2, ... of the disjoint row `blocks` (their stats merged)."""
    out, stats = [], None
    for block in blocks:
        part = posterior_stats(queries, block, sigma, chunk_size=config.chunk_size)
        stats = part if stats is None else stats.merge(part)
        out.append(query_value(stats, data, config.form).cpu())
    return out
