"""Estimate: the one mean-and-standard-error, used by the studies' mean_se and the sample metrics."""

import math

import numpy as np
import pytest
import torch

from lossfloor.core.stats import Estimate
from lossfloor.evaluate.metrics import energy_distance
from lossfloor.studies import common

VALUES = [0.3, 1.7, 2.2, -0.4, 5.0]


def by_hand(values):
    n, mean = len(values), sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


@pytest.mark.parametrize("kind", ["list", "array", "tensor", "generator"])
def test_estimate_of_any_sequence(kind):
    samples = {"list": VALUES, "array": np.array(VALUES), "tensor": torch.tensor(VALUES, dtype=torch.float64),
               "generator": (v for v in VALUES)}[kind]
    est = Estimate.of(samples)
    mean, se = by_hand(VALUES)
    assert est.value == pytest.approx(mean, rel=1e-15) and est.stderr == pytest.approx(se, rel=1e-14)


def test_single_sample_has_no_stderr():
    assert Estimate.of([2.0]).value == 2.0 and math.isnan(Estimate.of([2.0]).stderr)


def test_mean_se_is_estimate_of():
    assert common.mean_se(v for v in VALUES) == (Estimate.of(VALUES).value, Estimate.of(VALUES).stderr)
    assert math.isnan(common.mean_se([1.0])[1])


def test_energy_distance_stderr_is_over_its_blocks(monkeypatch):
    # The blocks' values go through Estimate.of: spy on it and check the returned estimate is its result.
    seen = []
    real = Estimate.of.__func__

    def spy(cls, samples):
        seen.append(list(samples))
        return real(cls, seen[-1])

    monkeypatch.setattr(Estimate, "of", classmethod(spy))
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 2, generator=gen), torch.randn(200, 2, generator=gen) + 0.5
    est = energy_distance(a, b, blocks=5, max_points=40)
    assert len(seen) == 1 and len(seen[0]) == 5
    assert (est.value, est.stderr) == pytest.approx(by_hand(seen[0]), rel=1e-12)
