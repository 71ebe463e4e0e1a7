"""Estimator settings (`EstimatorConfig`), the `ESTIMATORS` and `FORMS` registries, one level's result
(`LevelEstimate`) and the seeding of a level."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from lossfloor.core.errors import InputError
from lossfloor.core.registry import Registry
from lossfloor.floor.kernel import (
    DEFAULT_CHUNK,
    PosteriorStats,
)

if TYPE_CHECKING:
    from lossfloor.floor.matrix import DataMatrix
    from lossfloor.floor.strategies import EstimatorStrategy

ESTIMATORS = Registry("estimator")
"""Estimator name -> factory of its `strategies.EstimatorStrategy` (the built-in ones are registered in
`lossfloor.floor.strategies`, which the package imports)."""


def rb_values(stats: PosteriorStats, data: DataMatrix) -> Tensor:
    """Each query's posterior variance tr Var(x0 | x~) (Rao-Blackwellised)."""
    return stats.variance()


def global_values(stats: PosteriorStats, data: DataMatrix) -> Tensor:
    """The paper's A - B per query: the data's mean square minus ||E[x0 | x~]||^2."""
    return data.mean_sq - stats.mean().pow(2).sum(1)


FORMS = Registry("form")
"""Per-query form -> its values (summed over dimensions) from a query's posterior moments."""
FORMS.add("rb", rb_values, "posterior variance per query (Rao-Blackwellised)")
FORMS.add("global", global_values, "the paper's A - B (suffers cancellation where both are near A)")

DEFAULT_QUERIES = 4096  # queries per sigma level; the CLI caps it at N (one query per data point)
# Adaptive rounds aim at MARGIN x the queries the measured spread says the target needs, half of the rest at a
# time, so that the last rounds are sized from a well-measured spread.
MARGIN = 1.1


@dataclass(frozen=True)
class EstimatorConfig:
    """How to estimate one sigma level: estimator, queries per level, subset size, C, form."""

    estimator: str = "full"
    queries: int = DEFAULT_QUERIES  # Monte-Carlo queries per sigma level
    subset: int | None = None  # L for subset estimators (default min(N, 4096))
    C: float | None = None  # self-pair down-weighting; default 4N/L for cdol
    form: str = "rb"
    batch_size: int = 512  # queries per kernel call
    chunk_size: int = DEFAULT_CHUNK  # data rows per GEMM
    target_stderr: float | None = None  # if set: rounds of `queries` until stderr <= this x data variance
    max_queries: int = 1 << 20  # cap on the queries of one level when target_stderr is set
    # With target_stderr and the full estimator: a first round of min_queries, then rounds sized from the
    # measured per-query spread (None: rounds of `queries`, the behaviour before).
    min_queries: int | None = None
    # Exact pruning (full estimator, in-memory rows): data points whose logit is provably e^-(log N + 40)
    # below the query's source (by a 32-dimensional projection's distance bound) skip the GEMMs.
    prune: bool = False
    # With target_stderr and min_queries (full estimator): a control variate, the posterior variance of the
    # same query over a fixed random subset of this many rows (`control_variate_level`); used at a level only
    # where the first round predicts it lowers the cost.
    control_subset: int | None = None

    def __post_init__(self):
        strategy = self.strategy  # resolved once; unknown names are refused here
        FORMS.require(self.form)
        optional = tuple(k for k in ("subset", "min_queries", "control_subset")
                         if getattr(self, k) is not None)
        for name in ("queries", "batch_size", "chunk_size", "max_queries") + optional:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InputError(f"{name} must be an integer, got {value!r}")
        if self.queries < 2:
            raise InputError(f"need at least 2 queries per level, got {self.queries}")
        if self.batch_size < 1 or self.chunk_size < 1:
            raise InputError(f"batch_size and chunk_size must be >= 1, got {self.batch_size}, "
                             f"{self.chunk_size}")
        if self.max_queries < self.queries:
            raise InputError(f"max_queries ({self.max_queries}) must be >= queries ({self.queries})")
        if self.subset is not None and self.subset < 2:
            raise InputError(f"subset size L must be at least 2, got {self.subset}")
        if self.min_queries is not None and not 2 <= self.min_queries <= self.max_queries:
            raise InputError(f"min_queries must be in [2, max_queries], got {self.min_queries}")
        if self.control_subset is not None and (self.control_subset < 2 or not strategy.control_variates
                                                or self.target_stderr is None or self.min_queries is None):
            raise InputError(f"control_subset must be >= 2 and needs an estimator with control variates "
                             f"(full) with target_stderr and min_queries, got {self.control_subset} "
                             f"({self.estimator}, target_stderr={self.target_stderr}, "
                             f"min_queries={self.min_queries})")
        if self.C is not None and not (math.isfinite(self.C) and self.C >= 1):
            raise InputError(f"C must be finite and >= 1 (use estimator 'snis' for C = inf), got {self.C}")
        if self.target_stderr is not None and not (math.isfinite(self.target_stderr)
                                                   and self.target_stderr > 0):
            raise InputError(f"target stderr must be positive and finite, got {self.target_stderr}")

    def subset_size(self, n: int) -> int:
        """L, checked against the dataset size."""
        size = self.subset if self.subset is not None else min(n, 4096)
        if size > n:
            raise InputError(f"subset size L={size} exceeds the dataset size N={n}")
        return size

    @cached_property
    def strategy(self) -> EstimatorStrategy:
        """The `ESTIMATORS` strategy named by `estimator` (the name is what result files store)."""
        return ESTIMATORS.require(self.estimator)()


@dataclass(frozen=True)
class LevelEstimate:
    """J*(sigma) per dimension, its standard error and the number of queries behind it."""

    sigma: float
    loss: float
    stderr: float
    queries: int  # queries against the whole dataset
    control_queries: int = 0  # queries against the control variate's subset alone


def stratified_sources(n: int, m: int, generator: torch.Generator) -> Tensor:
    """m source indices in which every point of range(n) appears floor(m/n) or ceil(m/n) times."""
    reps, rest = divmod(m, n)
    parts = [torch.arange(n).repeat(reps), torch.randperm(n, generator=generator)[:rest]]
    return torch.cat(parts)


def subset_block_size(config: EstimatorConfig, n: int) -> int:
    """Queries per random subset: at most L, and small enough for at least 32 independent blocks,
    whose means give the standard error (a subset costs only L rows to load, so blocks are cheap)."""
    return max(1, min(config.subset_size(n), config.queries // 32))


def level_generator(seed: int, sigma: float) -> torch.Generator:
    """A generator keyed by (seed, sigma), so a level's numbers do not depend on the rest of the grid."""
    key = hashlib.sha256(f"{seed}:{float(sigma):.17g}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:7], "little"))
