"""Estimator strategies: the registry's built-in ones, and a new one registered here that `EstimatorConfig`
and `Estimator` take without any other code edited."""

import math

import numpy as np
import pytest
import torch

from lossfloor.core.errors import InputError
from lossfloor.floor.config import ESTIMATORS, EstimatorConfig
from lossfloor.floor.estimator import Estimator
from lossfloor.floor.strategies import EstimatorStrategy, FullEstimator, Round, SubsetEstimator
from lossfloor.floor.values import full_values


class PlainFull(EstimatorStrategy):
    """The exact posterior over all rows, with none of the full estimator's extras."""

    def round(self, data, sigma, config, generator, progress) -> Round:
        values, sources = full_values(data, sigma, config, generator, progress)
        return Round(values, len(values), sources)


@pytest.fixture
def plain(monkeypatch):
    monkeypatch.setitem(ESTIMATORS.entries, "plain", (PlainFull, "the exact posterior, no extras"))
    return "plain"


@pytest.fixture
def points():
    return torch.tensor(np.random.default_rng(0).normal(size=(200, 3)), dtype=torch.float32)


def test_builtin_strategies_and_their_self_weights():
    assert ESTIMATORS.names() == ["full", "cdol", "dol", "snis"]
    n, config = 1000, EstimatorConfig("cdol", subset=250)
    assert isinstance(EstimatorConfig("full").strategy, FullEstimator)
    assert EstimatorConfig("full").strategy.self_weight(config, n) is None
    assert config.strategy == SubsetEstimator(None) and config.strategy.self_weight(config, n) == 16.0
    given = EstimatorConfig("cdol", subset=250, C=2.5)
    assert given.strategy.self_weight(given, n) == 2.5
    for name, weight in (("dol", 1.0), ("snis", math.inf)):
        other = EstimatorConfig(name, subset=250)
        assert other.strategy.self_weight(other, n) == weight
    assert (EstimatorConfig("full").strategy.cost(config, n), config.strategy.cost(config, n)) == (1000, 250)
    with pytest.raises(InputError, match="unknown estimator 'bogus'; choose from full, cdol, dol, snis"):
        EstimatorConfig("bogus")


def test_a_registered_strategy_is_an_estimator(plain, points):
    """Its rounds are the full estimator's without pruning: the same numbers, bit for bit."""
    config = EstimatorConfig(plain, queries=400)
    assert isinstance(config.strategy, PlainFull)
    for sigma in (0.1, 1.0):
        mine = Estimator(points, config).level(sigma, seed=2)
        full = Estimator(points, EstimatorConfig("full", queries=400)).level(sigma, seed=2)
        assert mine == full
    curve = Estimator(points, config).curve([0.3, 3.0])
    assert curve.settings["estimator"] == "plain" and curve.settings["C_used"] is None


def test_capabilities_a_strategy_lacks_are_refused(plain):
    """No control variates by default: control_subset is refused as for the subset estimators."""
    with pytest.raises(InputError, match="control_subset"):
        EstimatorConfig(plain, target_stderr=0.01, min_queries=32, control_subset=100)
