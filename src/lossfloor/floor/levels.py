"""One sigma level: adaptive rounds until the target stderr, control variates where they pay, the
zero-level bound."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import torch

from lossfloor.floor.bound import ZERO_BOUND_SOURCES, spread_sample, zero_level_bound
from lossfloor.floor.config import (
    MARGIN,
    EstimatorConfig,
    LevelEstimate,
)
from lossfloor.floor.control import control_variate_level
from lossfloor.floor.matrix import DataMatrix
from lossfloor.floor.strategies import Round
from lossfloor.floor.values import clamped

GEOMETRIC_AFTER = 8  # fixed rounds of `queries` before each round doubles the queries so far
PROJECTION_QUERIES = 64  # queries before the measured spread may stop a level whose target is out of reach
PROJECTION_SLACK = 4.0  # ... when the target needs more than this many times max_queries


def estimate_level(data: DataMatrix, sigma: float, config: EstimatorConfig,
                   generator: torch.Generator, progress=None) -> LevelEstimate:
    """Estimate J*(sigma) per dimension with its standard error, in rounds of `config.strategy`.

    With `config.target_stderr`, rounds are added until the standard error is at most that fraction of the
    data variance (or `max_queries` is reached): rounds of `config.queries` (after GEOMETRIC_AFTER rounds,
    each as large as all before it, so that a small `queries` cannot take a million rounds), or, with
    `min_queries` (a strategy with `sized_rounds`), a first round of `min_queries` and then as many as the
    measured spread says are needed.  Once PROJECTION_QUERIES queries show that the target needs more than
    PROJECTION_SLACK x `max_queries`, the level stops there with a warning that says so (the bound on the
    work a user sees).  A level where every query gives exactly 0 (the memorised regime; a strategy with
    `zero_bound`) gets as standard error an upper bound of J* from (up to 256 of) its sources' neighbours
    (`zero_level_bound`), not 0.  With `config.control_subset` (and `min_queries`) a level may use control
    variates (`control_variate_level`).
    """
    if not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be positive and finite, got {sigma}")
    strategy = config.strategy
    target = None if config.target_stderr is None else config.target_stderr * data.variance
    adaptive = target is not None and config.min_queries is not None and strategy.sized_rounds
    units, sources, used = [], [], 0
    size = min(config.min_queries, config.queries) if adaptive else config.queries
    pending = None
    if adaptive and config.control_subset is not None and config.control_subset <= data.n // 2:
        pending = control_variate_level(data, sigma, config, generator, progress, target)
        if isinstance(pending, LevelEstimate):
            return pending
        pending = Round(pending[0], len(pending[0]), pending[1])
    while True:
        if pending is not None:  # the control variate's first round, where it did not pay: a plain round
            part, pending = pending, None
        else:
            part = strategy.round(data, sigma, replace(config, queries=max(size, 2)), generator, progress)
        units.append(part.units)
        if part.sources is not None:
            sources.append(part.sources)
        used += part.queries
        pooled = torch.cat(units)
        se = pooled.std().item() / math.sqrt(len(pooled))
        all_zero = strategy.zero_bound and not pooled.any()
        if all_zero:  # every query exactly 0: a bound stands in for the stderr
            se = zero_level_bound(data, spread_sample(torch.cat(sources), ZERO_BOUND_SOURCES), sigma,
                                  config.chunk_size)
        # An all-zero level whose bound stays above the target stops at `queries` (the bound, not the
        # queries, limits it): it reports the bound.
        if (target is None or se <= target or used >= config.max_queries
                or (all_zero and used >= config.queries)):
            return LevelEstimate(float(sigma), clamped(pooled.mean().item(), sigma, config.form), se, used)
        needed = MARGIN * (pooled.std().item() / target) ** 2 if pooled.any() else 0.0
        if used >= PROJECTION_QUERIES and needed > PROJECTION_SLACK * config.max_queries:
            warnings.warn(f"sigma = {sigma:.4g}: a standard error of {target:.2g} would need about "
                          f"{needed:.2g} queries, more than the cap of {config.max_queries:,}; stopped at "
                          f"{used:,} queries (standard error {se:.2g})", stacklevel=2)
            return LevelEstimate(float(sigma), clamped(pooled.mean().item(), sigma, config.form), se, used)
        if adaptive and pooled.any():  # half of what the measured spread says is missing, at a time
            needed = math.ceil(MARGIN * (pooled.std().item() / target) ** 2)
            size = min(max(math.ceil((needed - used) / 2), config.min_queries), config.max_queries - used)
        elif adaptive:
            size = min(used, config.queries - used)  # all zero, bound too loose: double the sources
        elif strategy.sized_rounds:
            rounds = len(units)
            size = min(config.queries if rounds < GEOMETRIC_AFTER else used, config.max_queries - used)
