"""Estimator strategies: which data points normalise each query's posterior, registered in `ESTIMATORS`.

Every estimator draws queries x~ = x_src + sigma eps from source points x_src of the dataset; a strategy
gives one round of them (`Round`) and says what it supports: rounds of any size (adaptive rounds), exact
pruning, control variates, the all-zero level's bound, and its cost in data rows per query.

- `FullEstimator` (``full``): the whole dataset, the exact posterior.  Sources are stratified: every point
  is the source of the same number of queries, up to one.
- `SubsetEstimator(C)` (``dol`` C = 1, ``cdol`` C = the config's C or 4 N / L, ``snis`` C = inf): a random
  subset of L points that holds the source, the self-pair's weight divided by C (docs/readme/theory.md).
  Queries sharing a subset are correlated: the independent units are the subsets' means.

A new estimator is a class with `round` (subclass `EstimatorStrategy`) and one `ESTIMATORS.add(name,
factory, description)`; `EstimatorConfig(name)`, `Estimator` and `lossfloor estimate --estimator` take it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor

from lossfloor.floor.config import ESTIMATORS, EstimatorConfig
from lossfloor.floor.matrix import DataMatrix
from lossfloor.floor.mixture import MixtureMatrix, mixture_values
from lossfloor.floor.values import full_values, subset_values


@dataclass(frozen=True)
class Round:
    """One round of queries at a level: the independent units whose mean and spread give J* (per-query
    values, or the means of queries that share a subset), the queries behind them and, where the strategy
    draws them, the queries' source rows (the zero-level bound samples them)."""

    units: Tensor
    queries: int
    sources: Tensor | None = None


class EstimatorStrategy:
    """An estimator of J*(sigma): one round of a level's queries, what it supports and what it costs."""

    sized_rounds: ClassVar[bool] = False  # rounds of any number of queries (adaptive rounds, min_queries)
    pruning: ClassVar[bool] = False  # honours `EstimatorConfig.prune` (exact)
    control_variates: ClassVar[bool] = False  # `control_variate_level` applies (`config.control_subset`)
    zero_bound: ClassVar[bool] = False  # an all-zero level reports `zero_level_bound` (needs `Round.sources`)

    def round(self, data: DataMatrix, sigma: float, config: EstimatorConfig, generator: torch.Generator,
              progress) -> Round:
        """`config.queries` queries at `sigma` (`progress(k)` after every k of them, if given)."""
        raise NotImplementedError

    def self_weight(self, config: EstimatorConfig, n: int) -> float | None:
        """C, the factor dividing the self-pair's kernel weight (result files' C_used); None: no self-pair."""
        return None

    def cost(self, config: EstimatorConfig, n: int) -> int:
        """Data rows behind one query."""
        return n


class FullEstimator(EstimatorStrategy):
    """The exact posterior over all N rows, with exact pruning, control variates and the zero-level bound."""

    sized_rounds = pruning = control_variates = zero_bound = True

    def round(self, data, sigma, config, generator, progress) -> Round:
        if isinstance(data, MixtureMatrix):  # a Gaussian mixture (latent mean/std): floor/mixture.py
            values, sources = mixture_values(data, sigma, config, generator, progress)
            return Round(values, len(values), sources)
        values, sources = full_values(data, sigma, config, generator, progress)
        return Round(values, len(values), sources)


@dataclass(frozen=True)
class SubsetEstimator(EstimatorStrategy):
    """The posterior over a random subset of L rows holding the source, the self-pair's weight divided by C
    (None: the config's C, by default 4 N / L, cDOL's choice for L << N)."""

    C: float | None = None

    def round(self, data, sigma, config, generator, progress) -> Round:
        c = self.self_weight(config, data.n)
        values, block = subset_values(data, sigma, config, c, generator, progress)
        return Round(values.view(-1, block).mean(1), len(values))

    def self_weight(self, config, n) -> float:
        if self.C is not None:
            return self.C
        return config.C if config.C is not None else 4.0 * n / config.subset_size(n)

    def cost(self, config, n) -> int:
        return config.subset_size(n)


ESTIMATORS.add("full", FullEstimator, "exact posterior over all N points")
ESTIMATORS.add("cdol", SubsetEstimator, "over a random subset of L points, the query's own point "
               "down-weighted by C (default 4N/L)")
ESTIMATORS.add("dol", partial(SubsetEstimator, 1.0), "over a random subset of L points (C = 1)")
ESTIMATORS.add("snis", partial(SubsetEstimator, math.inf), "over the L - 1 other points of a random subset "
               "(C = inf)")
