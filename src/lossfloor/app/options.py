"""Click option types of the command line: `Integer`, `Real` (finite) and `RealList`, with their ranges."""

from __future__ import annotations

import math

import click

# -- command-line option types ---------------------------------------------------------------------
# Each numeric option is checked once, where it is parsed: a click ParamType that refuses NaN, infinities
# and values outside the option's range, with the range in its one-line message.

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer
COUNT_MAX = 2**31 - 1


class Integer(click.IntRange):
    """An integer in [lo, hi]; click's message names the option and the range."""

    name = "integer"

    def __init__(self, lo: int, hi: int = COUNT_MAX):
        super().__init__(min=lo, max=hi)


class Real(click.FloatRange):
    """A finite float in a range (open or closed at either end); NaN and infinities are refused."""

    name = "number"

    def __init__(self, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False):
        super().__init__(min=lo, max=hi, min_open=lo_open, max_open=hi_open)

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number ({self._describe_range()})", param, ctx)
        return super().convert(number, param, ctx)


class RealList(click.ParamType):
    """A comma-separated list of numbers, each a `Real` of the given range, as a tuple of floats."""

    name = "list"

    def __init__(self, item: Real):
        self.item = item

    def convert(self, value, param, ctx):
        items = [v.strip() for v in str(value).split(",") if v.strip()]
        if not items:
            self.fail("expected comma-separated numbers, got none", param, ctx)
        values = []
        for v in items:
            try:
                values.append(float(self.item.convert(v, None, None)))
            except click.BadParameter as err:
                self.fail(f"{v!r}: {err.message}", param, ctx)
        return tuple(values)


SIGMA_RANGE = (1e-8, 1e8)  # noise levels: float32 kernels and samplers stay finite well beyond EDM's range
SIGMA = Real(*SIGMA_RANGE)
SIGMAS = RealList(SIGMA)
SEED = Integer(0, SEED_MAX)
