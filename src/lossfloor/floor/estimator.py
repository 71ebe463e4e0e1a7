"""Estimators of the optimal x0 loss J*(sigma) = E[tr Var(x0 | x~)] / D on a finite dataset.

All estimators draw queries x~ = x_src + sigma * eps from source points x_src of the dataset and
differ in which data points normalise each query's posterior; each is a strategy registered in
`config.ESTIMATORS` (`lossfloor.floor.strategies`):

- ``full``: the whole dataset (exact posterior).  Sources are stratified: every point is the source
  of the same number of queries, up to one.
- ``dol`` / ``cdol`` / ``snis``: a random subset of L points that contains the source (reconstructed
  from the paper's description, not transcribed: see docs/readme/theory.md): the self-pair's weight is
  divided by C.  C = 1 is DOL, C = inf drops the self-pair (SNIS over the other L - 1 points); cDOL's
  default is C = 4 N / L, tuned for L << N (at L = N the exact choice is C = 1).  The research note
  derives C ~ (N-1)/(L-1) as the ratio estimator of the full sums.  Queries sharing a subset are
  correlated, so each level uses at least 32 subsets and the standard error comes from their means.

Two per-query forms (`config.FORMS`): ``rb`` (Rao-Blackwellised, the posterior variance
E[||x||^2|x~] - ||E[x|x~]||^2, our default) and ``global`` (the paper's A - B with A = mean ||x_n||^2 over
the whole dataset and B from ||E[x|x~]||^2, which suffers Monte-Carlo cancellation when both terms are
near A).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from lossfloor.core.errors import InputError
from lossfloor.data.rows import take_rows
from lossfloor.floor.config import EstimatorConfig, LevelEstimate, level_generator
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.floor.levels import PROJECTION_SLACK, estimate_level
from lossfloor.floor.matrix import DataMatrix
from lossfloor.floor.mixture import MixtureMatrix, check_mixture_config

DEFAULT_CONFIG = EstimatorConfig()  # the full estimator, `DEFAULT_QUERIES` queries per level


SNAP_RTOL = 1e-9  # a requested level this close (relative) to a finished one is that level


def snap_to_done(sigmas, done: dict) -> list[float]:
    """Each requested level replaced by a finished one (a key of `done`) within SNAP_RTOL of it: a grid
    recomputed by another numpy (geomspace's last bits) still finds the levels saved by an earlier run."""
    keys = np.array(sorted(done), dtype=float)
    if not len(keys):
        return [float(s) for s in sigmas]
    out = []
    for s in sigmas:
        k = keys[np.argmin(np.abs(keys - s))]
        out.append(float(k) if abs(k - s) <= SNAP_RTOL * abs(s) else float(s))
    return out


class Estimator:
    """J*(sigma) on one dataset, optionally class-conditional (posterior within the query's class).

    With `std` (the shape of `rows`) every row is a Gaussian N(row, diag std^2), as stochastic VAE latents
    are: the exact floor of the mixture (`floor/mixture.py`; full estimator only).  std = 0 is the point
    data's estimator."""

    def __init__(self, rows, config: EstimatorConfig = DEFAULT_CONFIG, *, labels=None,
                 device="cpu", dtype=torch.float32, std=None):
        self.config = config
        if std is not None:
            check_mixture_config(config)
        self.data = _matrix(rows, std, device, dtype, config)
        self.classes: list[tuple[float, DataMatrix]] = []
        if labels is not None:
            labels = np.asarray(labels)
            if len(labels) != self.data.n:
                raise InputError(f"{len(labels)} labels for {self.data.n} data points")
            for c in np.unique(labels):
                idx = np.nonzero(labels == c)[0]
                part = _matrix(take_rows(self.data.rows, idx), None if std is None else take_rows(std, idx),
                               device, dtype, config)
                self.classes.append((len(idx) / self.data.n, part))
        config.subset_size(min([self.data.n] + [d.n for _, d in self.classes]))  # L <= N, checked early
        if not self.data_variance > 0:  # J* = 0 at every sigma; every ratio to the variance would be NaN
            within = " within each class" if self.classes else ""
            raise InputError(f"the data has zero variance{within} (identical points): J* is 0 at every sigma")

    @property
    def data_variance(self) -> float:
        """Per-dimension large-sigma limit of J*: the data variance, or the mean within-class variance."""
        if not self.classes:
            return self.data.variance
        return sum(frac * part.variance for frac, part in self.classes)

    def level(self, sigma: float, seed: int = 0, progress=None,
              config: EstimatorConfig | None = None) -> LevelEstimate:
        """J*(sigma) per dimension with its standard error (`config` overrides the estimator's)."""
        config = self.config if config is None else config
        gen = level_generator(seed, sigma)
        if not self.classes:
            return estimate_level(self.data, sigma, config, gen, progress)
        value = var = 0.0
        used = used_c = 0
        for frac, part in self.classes:
            m = max(2, round(config.queries * frac))
            part_config = replace(config, queries=m, max_queries=max(m, config.max_queries))
            est = estimate_level(part, sigma, part_config, gen, progress)
            value += frac * est.loss
            var += (frac * est.stderr) ** 2
            used += est.queries
            used_c += est.control_queries
        return LevelEstimate(float(sigma), value, math.sqrt(var), used, used_c)

    def curve(self, sigmas, seed: int = 0, done: dict | None = None, on_level=None,
              progress: bool = False) -> OptimalLossCurve:
        """Estimate every sigma level; `done` maps sigma to finished LevelEstimates (resume), and
        `on_level(estimate)` is called after each new level (to save progress)."""
        sigmas = [float(s) for s in sigmas]
        for s in sigmas:
            if not s > 0 or not math.isfinite(s):
                raise InputError(f"sigma must be positive and finite, got {s}")
        done = dict(done or {})
        sigmas = snap_to_done(sigmas, done)
        todo = [s for s in sigmas if s not in done]
        # With a target stderr the queries of a level are not known ahead: the bar counts levels instead.
        adaptive = self.config.target_stderr is not None
        bar = tqdm(total=len(todo) if adaptive else len(todo) * self.config.queries,
                   unit="level" if adaptive else "query", disable=not progress, desc="optimal loss")
        used = 0
        for s in todo:
            bar.set_postfix(sigma=f"{s:.3g}", **({"queries": used} if adaptive else {}))
            done[s] = self.level(s, seed, None if adaptive else bar.update)
            used += done[s].queries
            if adaptive:
                bar.update(1)
            if on_level is not None:
                on_level(done[s])
        bar.close()
        levels = [done[s] for s in sigmas]
        return OptimalLossCurve(
            sigma=[e.sigma for e in levels], loss=[e.loss for e in levels],
            stderr=[e.stderr for e in levels], data_variance=self.data_variance,
            n=self.data.n, dim=self.data.dim,
            settings={**asdict(self.config), "seed": seed,
                      "dtype": str(self.data.dtype).replace("torch.", ""),
                      "class_conditional": bool(self.classes),
                      **({"mixture": True, "within_variance": self.data.within_sq / self.data.dim}
                         if isinstance(self.data, MixtureMatrix) else {}),
                      "C_used": self.config.strategy.self_weight(self.config, self.data.n),
                      "queries_used": [e.queries for e in levels],
                      **({"control_queries_used": [e.control_queries for e in levels]}
                         if self.config.control_subset is not None else {})})

    def curve_for_total(self, objective, total_stderr: float, sigmas, seed: int = 0, *,
                        done: dict | None = None, on_level=None, progress: bool = False,
                        interp_fraction: float = 0.5, max_levels: int = 512,
                        max_rounds: int = 40) -> OptimalLossCurve:
        """A curve whose `objective` total has a standard uncertainty (Monte-Carlo and interpolation, per
        dimension) of at most `total_stderr`, starting from the grid `sigmas`.

        Each round either bisects (in log sigma) the intervals where lambda p J* changes fastest
        (`OptimalLossCurve.refinement_scores`), while the interpolation error exceeds `interp_fraction` of
        the Monte-Carlo error (or of the target), or re-estimates levels with more queries, allocated in
        proportion to |d total / d J_i| x the level's per-query standard deviation (Neyman allocation),
        until the total's uncertainty is below the target.  `done` / `on_level` resume and save as in
        `curve` (a level re-estimated with more queries is reported again).
        """
        if not (math.isfinite(total_stderr) and total_stderr > 0):
            raise InputError(f"total stderr must be positive and finite, got {total_stderr}")
        done = dict(done or {})
        sigmas = snap_to_done([float(s) for s in sigmas], done)
        grid = sorted(set(sigmas) | {s for s in done if min(sigmas) <= s <= max(sigmas)})
        base = replace(self.config, target_stderr=None)
        curve = self.curve(grid, seed, done, on_level, progress)
        done.update({s: LevelEstimate(s, v, e, q) for s, v, e, q in
                     zip(curve.sigma, curve.loss, curve.stderr, curve.settings["queries_used"], strict=True)})
        for _ in range(max_rounds):
            total = curve.total(objective, warn=False)
            if total.stderr <= total_stderr:
                break
            if total.below_grid_stderr >= total_stderr:  # neither levels nor queries inside the grid help
                remedy = curve.below_grid_remedy(objective, 0.5 * total_stderr)
                warnings.warn(f"total stderr {total.stderr:.3g} > {total_stderr:.3g}: the loss below the "
                              f"lowest level sigma = {curve.sigma[0]:.3g} alone is uncertain by "
                              f"{total.below_grid_stderr:.2g}; lower --sigma-min to {remedy:.2g} or below",
                              stacklevel=2)
                break
            if (total.interpolation_error > interp_fraction * max(total.mc_stderr, total_stderr)
                    and len(grid) < max_levels):
                scores = curve.refinement_scores(objective)
                worst = np.argsort(scores)[::-1][:max(1, len(scores) // 8)]
                grid = sorted(set(grid) | {math.sqrt(grid[i] * grid[i + 1]) for i in worst})
                curve = self.curve(grid, seed, done, on_level, progress)
            else:
                room = total_stderr**2 - total.interpolation_stderr**2 - total.below_grid_stderr**2
                target = math.sqrt(max(room, (0.5 * total_stderr) ** 2))
                queries, want = _neyman_queries(curve, objective, 0.95 * target, base)
                if want.max() > PROJECTION_SLACK * base.max_queries:  # out of reach: say so now
                    i = int(np.argmax(want))
                    warnings.warn(f"total stderr {total.stderr:.3g} > {total_stderr:.3g}: reaching it would "
                                  f"need about {want[i]:.2g} queries at sigma = {curve.sigma[i]:.3g}, more "
                                  f"than the cap of {base.max_queries:,} queries per level; stopped here",
                                  stacklevel=2)
                    break
                grown = [i for i, q in enumerate(queries) if q > curve.settings["queries_used"][i]]
                if not grown:
                    warnings.warn(f"total stderr {total.stderr:.3g} > {total_stderr:.3g}: the query cap "
                                  f"max_queries = {base.max_queries} is reached", stacklevel=2)
                    break
                for i in grown:
                    s = float(curve.sigma[i])
                    done[s] = self.level(s, seed, config=replace(base, queries=int(queries[i]),
                                                                  max_queries=int(queries[i])))
                    if on_level is not None:
                        on_level(done[s])
                curve = self.curve(grid, seed, done, None, False)
            done.update({s: LevelEstimate(s, v, e, q) for s, v, e, q in
                         zip(curve.sigma, curve.loss, curve.stderr, curve.settings["queries_used"],
                             strict=True)})
        curve.settings["total_stderr"] = total_stderr
        curve.settings["total_objective"] = getattr(objective, "name", str(objective))
        return curve


def _matrix(rows, std, device, dtype, config: EstimatorConfig) -> DataMatrix:
    """Point rows, or a Gaussian mixture's means and standard deviations."""
    if std is None:
        return DataMatrix(rows, device=device, dtype=dtype, chunk_size=config.chunk_size)
    return MixtureMatrix(rows, std, device=device, dtype=dtype, chunk_size=config.chunk_size)


def _neyman_queries(curve: OptimalLossCurve, objective, target: float,
                    config: EstimatorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Queries per level for a Monte-Carlo stderr `target` of the total at the least total number of queries:
    m_i proportional to |dT/dJ_i| sd_i (sd_i the per-query standard deviation); never fewer than now, at most
    the cap; and the uncapped numbers."""
    used = np.asarray(curve.settings["queries_used"], dtype=float)
    weight = np.abs(curve.sensitivity(objective)) * curve.stderr * np.sqrt(used)
    if not weight.sum() > 0:
        return used.astype(int), used
    want = np.ceil(weight * weight.sum() / target**2)
    return np.minimum(np.maximum(want, used), max(config.max_queries, used.max())).astype(int), want
