"""One sigma level: adaptive rounds until the target stderr, control variates where they pay, the
zero-level bound."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from lossfloor.floor.bound import ZERO_BOUND_SOURCES, _spread_sample, zero_level_bound
from lossfloor.floor.config import (
    MARGIN,
    EstimatorConfig,
    LevelEstimate,
)
from lossfloor.floor.control import control_variate_level
from lossfloor.floor.matrix import DataMatrix
from lossfloor.floor.values import _clamped, _full_values, _subset_values


def estimate_level(data: DataMatrix, sigma: float, config: EstimatorConfig,
                   generator: torch.Generator, progress=None) -> LevelEstimate:
    """Estimate J*(sigma) per dimension with its standard error.

    With `config.target_stderr`, rounds are added until the standard error is at most that fraction of the
    data variance (or `max_queries` is reached): rounds of `config.queries`, or, with `min_queries` (full
    estimator), a first round of `min_queries` and then as many as the measured spread says are needed.
    A level where every query of the full estimator gives exactly 0 (the memorised regime) gets as standard
    error an upper bound of J* from (up to 256 of) its sources' neighbours (`zero_level_bound`), not 0.
    With `config.control_subset` (and `min_queries`) a level may use control variates
    (`control_variate_level`).
    """
    if not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be positive and finite, got {sigma}")
    target = None if config.target_stderr is None else config.target_stderr * data.variance
    adaptive = target is not None and config.min_queries is not None and config.estimator == "full"
    units, sources, used = [], [], 0
    size = min(config.min_queries, config.queries) if adaptive else config.queries
    pending = None
    if adaptive and config.control_subset is not None and config.control_subset <= data.n // 2:
        pending = control_variate_level(data, sigma, config, generator, progress, target)
        if isinstance(pending, LevelEstimate):
            return pending
    while True:
        if pending is not None:  # the control variate's first round, where it did not pay: a plain round
            values, idx = pending
            pending = None
            units.append(values)
            sources.append(idx)
        elif config.estimator == "full":
            round_config = replace(config, queries=max(size, 2))
            values, idx = _full_values(data, sigma, round_config, generator, progress)
            units.append(values)
            sources.append(idx)
        else:
            values, block = _subset_values(data, sigma, config, generator, progress)
            # Queries sharing a subset are correlated: the independent units are the block means.
            units.append(values.view(-1, block).mean(1))
        used += len(values)
        pooled = torch.cat(units)
        se = pooled.std().item() / math.sqrt(len(pooled))
        all_zero = config.estimator == "full" and not pooled.any()
        if all_zero:  # every query exactly 0: a bound stands in for the stderr
            se = zero_level_bound(data, _spread_sample(torch.cat(sources), ZERO_BOUND_SOURCES), sigma,
                                  config.chunk_size)
        # An all-zero level whose bound stays above the target stops at `queries` (the bound, not the
        # queries, limits it): it reports the bound.
        if (target is None or se <= target or used >= config.max_queries
                or (all_zero and used >= config.queries)):
            return LevelEstimate(float(sigma), _clamped(pooled.mean().item(), sigma, config.form), se, used)
        if adaptive and pooled.any():  # half of what the measured spread says is missing, at a time
            needed = math.ceil(MARGIN * (pooled.std().item() / target) ** 2)
            size = min(max(math.ceil((needed - used) / 2), config.min_queries), config.max_queries - used)
        elif adaptive:
            size = min(used, config.queries - used)  # all zero, bound too loose: double the sources
        else:
            size = min(config.queries, config.max_queries - used) if config.estimator == "full" else size
