"""Click option types of the command line: `Integer`, `Real` (finite) and `RealList`, with their ranges."""

from __future__ import annotations

import math

import click

from lossfloor.core.registry import Registry, did_you_mean

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

























class UsageProblem(click.ClickException):
    """A user error: reported as one line on stderr with exit code 2."""

    exit_code = 2


# -- option types and shared options (range checks belong here, in one place) --------------------

# Every numeric option is range-checked here, where it is parsed (NaN and infinities are refused): one line
# naming the option and its range, exit code 2.
COUNT = Integer(1)  # a number of points, steps, queries... (the library checks it against the data too)
LEVELS = Integer(2, 100_000)  # sigma levels of a grid or a sampler
QUERIES = Integer(2, 1 << 20)  # Monte-Carlo queries per level
PATH = click.Path()


class RegistryChoice(click.Choice):
    """A click choice over a `Registry`'s names, read when the option is parsed, so that an entry registered
    after this module was imported is a choice too."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self.registry)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value not in self.registry:
            self.fail(f"{value!r} is not one of {', '.join(map(repr, self.registry))}"
                      f"{did_you_mean(value, self.registry)}", param, ctx)
        return super().convert(value, param, ctx)


def choice(names) -> click.Choice:
    """A click choice over a library registry (a `Registry`, or a fixed tuple of names or a dict)."""
    return RegistryChoice(names) if isinstance(names, Registry) else click.Choice(list(names))


def echo(lines, err: bool = False) -> None:
    for line in lines:
        click.echo(line, err=err)


def progress_option(f):
    return click.option("--progress/--no-progress", default=True, help="show progress bars")(f)


def device_option(f):
    return click.option("--device", default="cpu", help="cpu | cuda | cuda:K")(f)


# -- studies ------------------------------------------------------------------------------------


def csv_list(option: str, value: str, convert=str) -> list:
    """A comma-separated option as a list, or a usage problem."""
    try:
        items = [convert(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UsageProblem(f"{option}: expected a comma-separated list, got {value!r}") from None
    if not items:
        raise UsageProblem(f"{option}: empty list")
    return items
