"""A total optimal loss with its error budget (`TotalLoss`), whether a grid supports it (`GridCoverage`),
and the warnings that say how to mend a grid that does not."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lossfloor.core.stats import Estimate

UNIFORM_SD_RATIO = math.sqrt(3.0)  # half-width / standard deviation of a uniform distribution
COVERAGE_RTOL = 0.01  # a grid supports a total if its interpolation error is below this fraction (or MC)


@dataclass(frozen=True)
class TotalLoss(Estimate):
    """An objective's total optimal loss E_p[lambda J*] (per dimension): an `Estimate` (value, stderr).

    stderr: the combined standard uncertainty, sqrt(mc_stderr^2 + interpolation_stderr^2
        + below_grid_stderr^2).
    extrapolated: the part of the value that comes from beyond the sigma grid (below and above it).
    mc_stderr: the levels' Monte-Carlo standard errors propagated (linearly) to the total.
    interpolation_error: a bound on |error| from interpolating between the grid's levels (the monotone
        bracket, a worst case, or the half-grid difference / HALF_GRID_SAFETY, a conservative estimate) and
        extrapolating above them, not a standard error.  Nothing more being known of the error than that it
        lies within +-bound, it enters `stderr` as a uniform distribution on [-bound, bound] (GUM's type B
        rule): a standard uncertainty of bound / sqrt(3), `interpolation_stderr`, added in quadrature to the
        Monte-Carlo error, which is independent of it.
    below_grid_error: a bound on |error| from extrapolating below the lowest level (`below_grid`), entering
        `stderr` the same way (`below_grid_stderr`).  value +- sqrt(3) stderr thus always contains
        value +- (interpolation_error + below_grid_error) / sqrt(2).
    """

    extrapolated: float = 0.0
    mc_stderr: float = 0.0
    interpolation_error: float = 0.0
    below_grid_error: float = 0.0

    @property
    def interpolation_stderr(self) -> float:
        """The interpolation bound as a standard uncertainty: bound / sqrt(3) (uniform on +-bound)."""
        return self.interpolation_error / UNIFORM_SD_RATIO

    @property
    def below_grid_stderr(self) -> float:
        """The below-the-grid bound as a standard uncertainty: bound / sqrt(3) (uniform on +-bound)."""
        return self.below_grid_error / UNIFORM_SD_RATIO


@dataclass(frozen=True)
class GridCoverage:
    """Whether a curve's sigma grid supports an objective's total, and with what estimated error."""

    objective: str
    total: TotalLoss
    relative_error: float  # interpolation_error / |total|
    supported: bool  # interpolation error and below-the-grid error <= max(rtol |total|, Monte-Carlo stderr)
    message: str


def _supported(total: TotalLoss, rtol: float = COVERAGE_RTOL) -> bool:
    return total.interpolation_error <= max(rtol * abs(total.value), total.mc_stderr)


def _below_grid_supported(total: TotalLoss, rtol: float = COVERAGE_RTOL) -> bool:
    return total.below_grid_error <= max(rtol * abs(total.value), total.mc_stderr)


def _below_grid_message(name: str, total: TotalLoss, sigma_min: float, remedy: float) -> str:
    rel = total.below_grid_error / abs(total.value) if total.value else math.inf
    return (f"{name}: the loss below the lowest level sigma = {sigma_min:.3g} is extrapolated with an error "
            f"of up to {total.below_grid_error:.2g} ({rel:.1%} of the total {total.value:.4g}, Monte-Carlo "
            f"stderr {total.mc_stderr:.2g}); lower --sigma-min to {remedy:.2g} or below")


def _coverage_message(name: str, total: TotalLoss, levels: int) -> str:
    rel = total.interpolation_error / abs(total.value) if total.value else math.inf
    return (f"{name}: the sigma grid ({levels} levels) is too coarse for this total: estimated "
            f"interpolation error {total.interpolation_error:.3g} ({rel:.1%} of {total.value:.4g}, "
            f"Monte-Carlo stderr {total.mc_stderr:.2g}); add levels where lambda p J* changes fastest "
            "(OptimalLossCurve.refinement_scores) or use estimate --total-stderr")
