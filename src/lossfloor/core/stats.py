"""The one value-with-standard-error type, `Estimate`, shared by totals, metrics and model losses."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A Monte-Carlo value with its standard error."""

    value: float
    stderr: float

    @classmethod
    def of(cls, samples) -> Estimate:
        """The mean of i.i.d. samples (an array, tensor or any iterable of numbers) and its standard error
        (nan for a single sample): the one mean-and-SE of the package."""
        v = np.asarray(samples if hasattr(samples, "__len__") else list(samples), dtype=np.float64).ravel()
        return cls(float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan)

    def __sub__(self, other: Estimate) -> Estimate:
        """The difference of two independent estimates (standard errors added in quadrature)."""
        return Estimate(self.value - other.value, math.hypot(self.stderr, other.stderr))
