"""Scaling fits on the compute-optimal frontier of seed-averaged learning curves, with a run bootstrap.

The input is every checkpoint of several training runs: compute F, loss J, the model size (the stratum)
and the run's seed.  The frontier is taken on the *mean* curve of each size (the mean over its seeds at each
checkpoint): the lower envelope over sizes of the expected loss at each compute.  The bootstrap resamples
whole runs, seeds with replacement within each size (so every size stays in the design), recomputes the
mean curves, *re-chooses the frontier* and refits, so the intervals carry the frontier's own selection
noise.  Every form of `lossfloor.evaluate.scaling` (plain, corrected, free) is fitted on the same
resamples, so differences between forms have paired intervals.

Intervals are expanded percentile intervals (`bootstrap.expanded_quantiles`) with the stratified
correction: with n_h runs per size the bootstrap variance of a stratum mean is (n_h - 1) / n_h of the
usual estimate, so the quantiles are widened by sqrt(n_h / (n_h - 1)) on t with (runs - sizes) degrees of
freedom.  With one run per size the resampling falls back to whole runs across sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lossfloor.core.errors import InputError
from lossfloor.evaluate.bootstrap import LEVEL, expanded_quantiles
from lossfloor.evaluate.scaling import (
    FORMS,
    HUBER_DELTA,
    compute_frontier,
    extrapolation_error,
    gather_rows,
    resample_starts,
)

STATS = ("alpha", "beta", "floor", "rho", "r2", "extrapolation_error")


def _size_order(label) -> tuple:
    """Sort key of size labels: numbers (also as text, "64") by value, then other text."""
    try:
        return (0, float(label), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(label))


@dataclass(frozen=True)
class Curves:
    """Checkpoints of runs grouped by size: `loss[h]` is (runs of size h, checkpoints) at `compute[h]`."""

    sizes: tuple
    compute: tuple[np.ndarray, ...]
    loss: tuple[np.ndarray, ...]

    @classmethod
    def from_points(cls, compute, loss, size, run) -> Curves:
        """Group points (one per run and checkpoint) by size; the runs of a size share their checkpoints."""
        compute, loss = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
        size, run = np.asarray(size), np.asarray(run)
        if not (len(compute) == len(loss) == len(size) == len(run)):
            raise InputError("compute, loss, size and run need one value per point")
        sizes, comp, los = [], [], []
        for h in sorted(np.unique(size).tolist(), key=_size_order):  # numeric labels in numeric order
            sel = size == h
            grid = np.unique(compute[sel])
            runs = np.unique(run[sel])
            table = np.full((len(runs), len(grid)), np.nan)
            for i, r in enumerate(runs):
                pick = sel & (run == r)
                table[i, np.searchsorted(grid, compute[pick])] = loss[pick]
            if np.isnan(table).any():
                raise InputError(f"size {h}: every run needs a loss at each of its size's {len(grid)} "
                                 "checkpoints")
            sizes.append(h)
            comp.append(grid)
            los.append(table)
        return cls(tuple(sizes), tuple(comp), tuple(los))

    @property
    def runs(self) -> int:
        return sum(len(t) for t in self.loss)

    def stratified(self) -> bool:
        """Whether every size has at least 2 runs (else the bootstrap resamples runs across sizes)."""
        return all(len(t) >= 2 for t in self.loss)

    def mean(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(compute, mean loss over runs, size) per checkpoint of every size, concatenated."""
        return self.flat(tuple(t.mean(0) for t in self.loss))

    def flat(self, means) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        size = np.concatenate([np.full(len(c), i) for i, c in enumerate(self.compute)])
        return np.concatenate(self.compute), np.concatenate(means), size

    def resampled_means(self, n_boot: int, seed: int) -> np.ndarray:
        """(n_boot, checkpoints) mean curves of resampled runs (within sizes when `stratified`)."""
        rng = np.random.default_rng(seed)
        if self.stratified():
            parts = [t[rng.integers(len(t), size=(n_boot, len(t)))].mean(1) for t in self.loss]
            return np.concatenate(parts, axis=1)
        # Some size has one run: draw runs across sizes; a size not drawn leaves its checkpoints out (nan).
        first = np.cumsum([0] + [len(t) for t in self.loss])
        offsets = np.cumsum([0] + [len(c) for c in self.compute])
        out = np.full((n_boot, offsets[-1]), np.nan)
        for b in range(n_boot):
            picks = rng.integers(self.runs, size=self.runs)
            for h, t in enumerate(self.loss):
                mine = picks[(picks >= first[h]) & (picks < first[h + 1])] - first[h]
                if len(mine):
                    out[b, offsets[h]:offsets[h + 1]] = t[mine].mean(0)
        return out

    def quantiles(self, level: float = LEVEL) -> tuple[float, float]:
        """The expanded percentile levels for this design (stratified correction when `stratified`)."""
        if not self.stratified():
            return expanded_quantiles(self.runs, level)
        return expanded_quantiles(self.runs, level, strata=len(self.sizes))


def fit_point(form: str, compute, loss, floor: float, delta: float = HUBER_DELTA, starts=None) -> dict:
    """One form's parameters, rho, R^2 and top-third extrapolation error on these points (no bootstrap);
    the free form from `starts` ((log beta, alpha, log E) at F = 1) when given, else its grid of starts."""
    rows = gather_rows(form, compute, loss, np.array([floor]), np.ones((1, len(loss))), delta, starts)
    extra, n_extra = extrapolation_error(form, compute, loss, floor, delta=delta, starts=starts)
    out = {k: float(getattr(rows, k)[0]) for k in ("alpha", "beta", "floor", "rho", "r2")}
    return {**out, "extrapolation_error": extra, "extrapolation_points": n_extra}


def _frontier_fits(compute, loss, floor: float, forms, starts=None) -> tuple[np.ndarray, dict]:
    idx = compute_frontier(compute, loss)
    if len(idx) < 3:
        return idx, {f: dict.fromkeys(STATS, math.nan) for f in forms}
    return idx, {f: fit_point(f, compute[idx], loss[idx], floor, starts=starts if f == "free" else None)
                 for f in forms}


@dataclass(frozen=True)
class FittedLaw:
    """A fitted J(F) = floor + beta F^alpha (figures and per-row predictions)."""

    alpha: float
    beta: float
    floor: float
    rho: float

    def predict(self, compute) -> np.ndarray:
        return self.floor + self.beta * np.asarray(compute, dtype=float) ** self.alpha


@dataclass(frozen=True)
class FrontierStudy:
    """Point fits on the frontier of the mean curves and their run-bootstrap resamples."""

    curves: Curves
    floor: float
    points: np.ndarray  # frontier indices into `curves.mean()`
    fits: dict  # form -> fit_point dict
    boot: dict  # form -> stat -> (n_boot,) array
    frontier_share: np.ndarray  # per size: fraction of resamples whose frontier contains it
    seed: int
    jstar_draws: np.ndarray  # the floor used in each resample (J* redrawn from its standard error)

    def laws(self) -> dict[str, FittedLaw]:
        """Each form's point fit as a `FittedLaw`."""
        return {f: FittedLaw(*(fit[k] for k in ("alpha", "beta", "floor", "rho")))
                for f, fit in self.fits.items()}

    def interval(self, values: np.ndarray, level: float = LEVEL) -> list[float]:
        ok = values[np.isfinite(values)]
        if not len(ok):
            return [math.nan, math.nan]
        return [float(q) for q in np.quantile(ok, self.curves.quantiles(level))]

    def difference(self, a: str, b: str, stat: str) -> dict:
        """stat(a) - stat(b): value, paired interval, bootstrap SD and the smallest difference the design
        detects with 80% power at two-sided 5% (2.8 bootstrap SDs)."""
        d = self.boot[a][stat] - self.boot[b][stat]
        sd = float(np.nanstd(d, ddof=1)) if np.isfinite(d).sum() > 1 else math.nan
        return {"stat": stat, "value": self.fits[a][stat] - self.fits[b][stat], "ci": self.interval(d),
                "sd": sd, "detectable": 2.8 * sd}

    def summary(self) -> dict:
        """JSON-ready: per form its point values and intervals; paired differences; the free floor vs J*."""
        _, mean, size = self.curves.mean()
        on = mean[self.points]
        out = {}
        for form, fit in self.fits.items():
            row = {"form": form, **fit, "n": len(self.points), "seed": self.seed,
                   "units": self.curves.runs, "strata": len(self.curves.sizes),
                   "bootstrap_failed": int(np.sum(~np.isfinite(self.boot[form]["rho"])))}
            row["below_floor"] = [int(i) for i in np.nonzero(on <= fit["floor"])[0]]  # left out of rho
            for stat in STATS:
                row[f"{stat}_ci"] = self.interval(self.boot[form][stat])
            out[form] = row
        if "plain" in self.fits and "corrected" in self.fits:
            out["corrected_minus_plain"] = {s: self.difference("corrected", "plain", s)
                                            for s in ("rho", "r2", "extrapolation_error")}
        if "plain" in self.fits and "free" in self.fits:
            out["free_minus_plain"] = {"extrapolation_error":
                                       self.difference("free", "plain", "extrapolation_error")}
            e = self.boot["free"]["floor"] - self.jstar_draws
            out["free_floor_minus_jstar"] = {"value": self.fits["free"]["floor"] - self.floor,
                                             "ci": self.interval(e), "jstar": self.floor}
        out["frontier_sizes"] = sorted({self.curves.sizes[int(i)] for i in size[self.points]})
        out["frontier_share"] = {str(h): float(s) for h, s in zip(self.curves.sizes, self.frontier_share,
                                                                  strict=True)}
        return out


def frontier_study(curves: Curves, floor: float, *, n_boot: int, seed: int, forms=FORMS,
                   floor_stderr: float = 0.0) -> FrontierStudy:
    """Fit `forms` on the frontier of the mean curves and on `n_boot` run resamples (see the top).  A floor
    standard error is propagated by redrawing J* ~ N(floor, se^2) per resample (for the corrected form and
    E - J*); leave it 0 when the losses and J* share their draws (the study's paired gaps)."""
    compute, mean, size = curves.mean()
    idx, fits = _frontier_fits(compute, mean, floor, forms)
    free = fits.get("free")
    starts = (resample_starts(compute[idx], mean[idx], free["alpha"], free["beta"], free["floor"])
              if free is not None and len(idx) >= 3 else None)
    draws = floor + floor_stderr * np.random.default_rng([seed, 1]).standard_normal(n_boot)
    boot = {f: {s: np.full(n_boot, np.nan) for s in STATS} for f in forms}
    share = np.zeros(len(curves.sizes))
    for b, row in enumerate(curves.resampled_means(n_boot, seed)):
        ok = np.isfinite(row)
        sub = np.flatnonzero(ok)
        i_b, fits_b = _frontier_fits(compute[sub], row[sub], float(draws[b]), forms, starts)
        share[np.unique(size[sub][i_b])] += 1
        for f in forms:
            for s in STATS:
                boot[f][s][b] = fits_b[f][s]
    return FrontierStudy(curves, float(floor), idx, fits, boot, share / max(n_boot, 1), seed, draws)


__all__ = ["Curves", "FittedLaw", "FrontierStudy", "fit_point", "frontier_study"]
