"""Estimators of the optimal x0 loss J*(sigma) = E[tr Var(x0 | x~)] / D on a finite dataset.

All estimators draw queries x~ = x_src + sigma * eps from source points x_src of the dataset and
differ in which data points normalise each query's posterior:

- ``full``: the whole dataset (exact posterior).  Sources are stratified: every point is the source
  of the same number of queries, up to one.
- ``dol`` / ``cdol`` / ``snis``: a random subset of L points that contains the source (reconstructed
  from the paper's description, not transcribed: see docs/readme/theory.md): the self-pair's weight is
  divided by C.  C = 1 is DOL, C = inf drops the self-pair (SNIS over the other L - 1 points); cDOL's
  default is C = 4 N / L, tuned for L << N (at L = N the exact choice is C = 1).  The research note
  derives C ~ (N-1)/(L-1) as the ratio estimator of the full sums.  Queries sharing a subset are
  correlated, so each level uses at least 32 subsets and the standard error comes from their means.

Two per-query forms: ``rb`` (Rao-Blackwellised, the posterior variance E[||x||^2|x~] - ||E[x|x~]||^2,
our default) and ``global`` (the paper's A - B with A = mean ||x_n||^2 over the whole dataset and
B from ||E[x|x~]||^2, which suffers Monte-Carlo cancellation when both terms are near A).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .curve import OptimalLossCurve
from .distributed import sharded_posterior_stats
from .kernel import DEFAULT_CHUNK, Projection, as_rows, candidate_rows, posterior_stats, row_square_norms
from .storage import take_rows

Tensor = torch.Tensor
ESTIMATORS = ("full", "cdol", "dol", "snis")
FORMS = ("rb", "global")
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
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; choose from {', '.join(ESTIMATORS)}")
        if self.form not in FORMS:
            raise ValueError(f"unknown form {self.form!r}; choose from {', '.join(FORMS)}")
        optional = tuple(k for k in ("subset", "min_queries", "control_subset")
                         if getattr(self, k) is not None)
        for name in ("queries", "batch_size", "chunk_size", "max_queries") + optional:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.queries < 2:
            raise ValueError(f"need at least 2 queries per level, got {self.queries}")
        if self.batch_size < 1 or self.chunk_size < 1:
            raise ValueError(f"batch_size and chunk_size must be >= 1, got {self.batch_size}, "
                             f"{self.chunk_size}")
        if self.max_queries < self.queries:
            raise ValueError(f"max_queries ({self.max_queries}) must be >= queries ({self.queries})")
        if self.subset is not None and self.subset < 2:
            raise ValueError(f"subset size L must be at least 2, got {self.subset}")
        if self.min_queries is not None and not 2 <= self.min_queries <= self.max_queries:
            raise ValueError(f"min_queries must be in [2, max_queries], got {self.min_queries}")
        if self.control_subset is not None and (self.control_subset < 2 or self.estimator != "full"
                                                or self.target_stderr is None or self.min_queries is None):
            raise ValueError(f"control_subset must be >= 2 and needs the full estimator with target_stderr "
                             f"and min_queries, got {self.control_subset} ({self.estimator}, "
                             f"target_stderr={self.target_stderr}, min_queries={self.min_queries})")
        if self.C is not None and not (math.isfinite(self.C) and self.C >= 1):
            raise ValueError(f"C must be finite and >= 1 (use estimator 'snis' for C = inf), got {self.C}")
        if self.target_stderr is not None and not (math.isfinite(self.target_stderr)
                                                   and self.target_stderr > 0):
            raise ValueError(f"target stderr must be positive and finite, got {self.target_stderr}")

    def subset_size(self, n: int) -> int:
        """L, checked against the dataset size."""
        size = self.subset if self.subset is not None else min(n, 4096)
        if size > n:
            raise ValueError(f"subset size L={size} exceeds the dataset size N={n}")
        return size

    def self_weight(self, n: int) -> float:
        """C, the factor dividing the self-pair's kernel weight."""
        if self.estimator == "dol":
            return 1.0
        if self.estimator == "snis":
            return math.inf
        if self.estimator == "cdol":
            return self.C if self.C is not None else 4.0 * n / self.subset_size(n)
        return 1.0


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


def _rows(data, idx: Tensor, device, dtype) -> Tensor:
    """Rows of a tensor or an array-like (memmap) by index."""
    if isinstance(data, Tensor):
        return data[idx.to(data.device)].to(device=device, dtype=dtype)
    order = np.argsort(idx.numpy())
    rows = np.empty((len(idx),) + tuple(data.shape[1:]), dtype=data.dtype)
    rows[order] = data[np.sort(idx.numpy())]  # sorted reads are sequential on a memmap
    return torch.from_numpy(rows).to(device=device, dtype=dtype)


class DataMatrix:
    """Data rows as an (N, D) tensor or array-like (memmap), with the centre and mean squared norm."""

    def __init__(self, rows, *, device="cpu", dtype=torch.float32, chunk_size: int = DEFAULT_CHUNK):
        if len(rows) < 2:
            raise ValueError(f"need at least 2 data points, got {len(rows)}")
        self.rows = rows.reshape(len(rows), -1)
        if isinstance(self.rows, Tensor):  # in-memory data lives on the working device
            self.rows = self.rows.to(device=device, dtype=dtype)
        self.device, self.dtype, self.chunk_size = torch.device(device), dtype, chunk_size
        self.projection = None  # built on first use by exact pruning (EstimatorConfig.prune)
        self.prune_fails_from = math.inf  # the least sigma at which pruning kept half the rows or more
        self._row_sq = self._centred = None
        self.n, self.dim = self.rows.shape
        self.center = sum(x.sum(0) for x in self._chunks()) / self.n
        # Two passes: the centred second moment is tr Cov(x0), the large-sigma limit of J* (summed).
        self.mean_sq = sum((x - self.center).pow(2).sum().item() for x in self._chunks()) / self.n

    @property
    def row_sq(self) -> Tensor | None:
        """float64 squared norms of the centred rows, computed once (in-memory rows only)."""
        if self._row_sq is None and isinstance(self.rows, Tensor):
            self._row_sq = row_square_norms(self.rows, self.center, self.dtype, self.chunk_size)
        return self._row_sq

    @property
    def kernel_rows(self) -> tuple:
        """The rows the kernel reads and the shift it subtracts from them: in-memory rows are centred once (a
        copy the size of the data; subtracting the centre in every call cost ~2% of the kernel's time), rows
        on disk per chunk as they are read."""
        if not isinstance(self.rows, Tensor):
            return self.rows, self.center
        if self._centred is None:
            self._centred = self.rows - self.center.to(self.rows.device, self.dtype)
        return self._centred, None

    def _chunks(self):
        for start in range(0, self.n, self.chunk_size):
            rows = self.rows[start:start + self.chunk_size]
            if isinstance(rows, Tensor):  # it may live on the GPU: no numpy round trip
                yield rows.double()
            else:
                yield torch.from_numpy(np.array(rows, dtype=np.float64))

    @property
    def variance(self) -> float:
        """Per-dimension data variance, the large-sigma limit of J*."""
        return self.mean_sq / self.dim

    def centered_rows(self, idx: Tensor) -> Tensor:
        """Rows by index, centred, on the working device and dtype."""
        return _rows(self.rows, idx, self.device, self.dtype) - self.center.to(self.device, self.dtype)


def estimate_level(data: DataMatrix, sigma: float, config: EstimatorConfig,
                   generator: torch.Generator, progress=None) -> LevelEstimate:
    """Estimate J*(sigma) per dimension with its standard error.

    With `config.target_stderr`, rounds are added until the standard error is at most that fraction of the
    data variance (or `max_queries` is reached): rounds of `config.queries`, or, with `min_queries` (full
    estimator), a first round of `min_queries` and then as many as the measured spread says are needed.
    A level where every query of the full estimator gives exactly 0 (the memorised regime) gets as standard
    error an upper bound of J* from (up to 256 of) its sources' neighbours (`zero_level_bound`), not 0.
    With `config.control_subset` (and `min_queries`) a level may use control variates
    (`control_variate_level`).
    """
    if not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be positive and finite, got {sigma}")
    target = None if config.target_stderr is None else config.target_stderr * data.variance
    adaptive = target is not None and config.min_queries is not None and config.estimator == "full"
    units, sources, used = [], [], 0
    size = min(config.min_queries, config.queries) if adaptive else config.queries
    pending = None
    if adaptive and config.control_subset is not None and config.control_subset <= data.n // 2:
        pending = control_variate_level(data, sigma, config, generator, progress, target)
        if isinstance(pending, LevelEstimate):
            return pending
    while True:
        if pending is not None:  # the control variate's first round, where it did not pay: a plain round
            values, idx = pending
            pending = None
            units.append(values)
            sources.append(idx)
        elif config.estimator == "full":
            round_config = replace(config, queries=max(size, 2))
            values, idx = _full_values(data, sigma, round_config, generator, progress)
            units.append(values)
            sources.append(idx)
        else:
            values, block = _subset_values(data, sigma, config, generator, progress)
            # Queries sharing a subset are correlated: the independent units are the block means.
            units.append(values.view(-1, block).mean(1))
        used += len(values)
        pooled = torch.cat(units)
        se = pooled.std().item() / math.sqrt(len(pooled))
        all_zero = config.estimator == "full" and not pooled.any()
        if all_zero:  # every query exactly 0: a bound stands in for the stderr
            se = zero_level_bound(data, _spread_sample(torch.cat(sources), ZERO_BOUND_SOURCES), sigma,
                                  config.chunk_size)
        # An all-zero level whose bound stays above the target stops at `queries` (the bound, not the
        # queries, limits it): it reports the bound.
        if (target is None or se <= target or used >= config.max_queries
                or (all_zero and used >= config.queries)):
            return LevelEstimate(float(sigma), _clamped(pooled.mean().item(), sigma, config.form), se, used)
        if adaptive and pooled.any():  # half of what the measured spread says is missing, at a time
            needed = math.ceil(MARGIN * (pooled.std().item() / target) ** 2)
            size = min(max(math.ceil((needed - used) / 2), config.min_queries), config.max_queries - used)
        elif adaptive:
            size = min(used, config.queries - used)  # all zero, bound too loose: double the sources
        else:
            size = min(config.queries, config.max_queries - used) if config.estimator == "full" else size


def control_variate_level(data: DataMatrix, sigma: float, config: EstimatorConfig, generator: torch.Generator,
                          progress, target: float) -> LevelEstimate | tuple[Tensor, Tensor]:
    """J*(sigma) with control variates.  Two kinds: c(x~), the posterior variance of the query over a fixed
    random subset S of the rows, which costs |S|/N of a full query and tracks v(x~) where the posterior
    spreads over many points, and free features of known mean 0 (`_features`).

    J* = E[v - beta.(c, f)] + beta_c E[c]: the first mean from full queries (each also gives c and f), the
    second from independent queries against S alone, so the estimate is unbiased for any beta, and its
    variance is var(v - beta.(c, f))/n + beta_c^2 var(c)/n_c.  |S| (none, L = `config.control_subset` or 4L,
    nested), beta and the split come from a first round of `min_queries` that is not reused in the estimate
    (beta is then independent of the samples it is applied to); that round is returned, as a plain round,
    where no choice lowers the predicted cost by at least 20%, or where every query gave 0.  The plan is
    carried out half at a time, re-sized from the measured spreads, until the stderr meets `target`."""
    sizes = sorted({config.control_subset, min(4 * config.control_subset, data.n // 2)})
    members = torch.randperm(data.n, generator=generator)[:sizes[-1]]
    blocks = [data.centered_rows(members[a:b]) for a, b in zip([0] + sizes[:-1], sizes, strict=True)]
    pilot = replace(config, queries=config.min_queries)
    v, idx, cs, f = _full_values(data, sigma, pilot, generator, progress, control=blocks)
    if not v.any():
        return v, idx
    best = None
    for k in range(-1, len(blocks)):  # features alone, then with each nested subset: the cheapest plan
        x = f if k < 0 else torch.cat((cs[k][:, None], f), 1)
        beta = _least_squares(x, v)
        cost = 0.0 if k < 0 else sizes[k] / data.n  # a query against S, relative to one against all rows
        sd_control = 0.0 if k < 0 else abs(beta[0].item()) * cs[k].std().item()
        plan = _control_split(v.std().item(), (v - (x * beta).sum(1)).std().item(), sd_control, cost, target)
        if plan is not None and (best is None or _plan_cost(plan, cost) < _plan_cost(best[2], best[1])):
            best = (k, cost, plan, beta)
    if best is None:
        return v, idx
    k, cost, plan, beta = best
    blocks = blocks[:k + 1]
    beta_c = 0.0 if k < 0 else beta[0].item()
    diffs, controls = [], []
    used = used_c = 0
    max_control = 0 if k < 0 else config.max_queries * max(1, round(1 / cost))
    while True:  # each round at most half of what the plan still wants: the first round's spreads are rough
        n_full = min(max(plan[0] - used, 0), config.max_queries - used)
        n_control = min(max(plan[1] - used_c, 0), max_control - used_c)
        n_full, n_control = (max(math.ceil(n / 2), min(n, config.min_queries)) for n in (n_full, n_control))
        if n_full >= 1 or not diffs:
            rnd = replace(config, queries=max(n_full, 2))
            v, _, cs, f = _full_values(data, sigma, rnd, generator, progress, control=blocks)
            diffs.append(v - ((f if k < 0 else torch.cat((cs[-1][:, None], f), 1)) * beta).sum(1))
            used += len(v)
        if k >= 0 and (n_control >= 1 or not controls):
            controls.append(_control_values(data, blocks, sigma, max(n_control, 2), config, generator))
            used_c += len(controls[-1])
        d = torch.cat(diffs)
        cc = torch.cat(controls) if controls else torch.zeros(2, dtype=d.dtype)
        se = math.sqrt(d.var().item() / len(d) + beta_c**2 * cc.var().item() / len(cc))
        if se <= target or (used >= config.max_queries and used_c >= max_control):
            loss = d.mean().item() + beta_c * cc.mean().item()
            return LevelEstimate(float(sigma), _clamped(loss, sigma, "control-variate"), se,
                                 used + config.min_queries, used_c)
        plan = _control_split(None, d.std().item(), abs(beta_c) * cc.std().item(), cost, target)
        if plan[0] <= used and plan[1] <= used_c:  # spreads met, stderr not (sampling noise): a bit more
            plan = (used + config.min_queries, used_c + (math.ceil(config.min_queries / cost) if cost else 0))


def _least_squares(x: Tensor, y: Tensor) -> Tensor:
    """beta minimising the variance of y - x beta (columns centred; float64), by the normal equations summed
    without threaded BLAS, so that the same samples give the same bits."""
    xc = (x - x.mean(0)).double().numpy()
    yc = (y - y.mean()).double().numpy()
    gram, rhs = np.einsum("ni,nj->ij", xc, xc), np.einsum("ni,n->i", xc, yc)
    return torch.from_numpy(np.linalg.lstsq(gram, rhs, rcond=None)[0])


def _features(x_src: Tensor, eps: Tensor, data: DataMatrix) -> Tensor:
    """Per-query control features of known mean 0 (sources uniform over the data, eps ~ N(0, I) independent
    of them): x_s . eps, ||x_s||^2 - E||x_s||^2 (the centred mean square) and ||eps||^2 - D."""
    x = x_src.double().cpu()
    return torch.stack(((x * eps).sum(1), x.pow(2).sum(1) - data.mean_sq, eps.pow(2).sum(1) - data.dim), 1)


def _control_split(sd_plain: float | None, sd_diff: float, sd_control: float, cost: float,
                   target: float) -> tuple[int, int] | None:
    """Full and control queries for a stderr `target` at the least cost (n ~ sd_diff / sqrt(1 + cost),
    n_c ~ |beta_c| sd_c / sqrt(cost)), with the plain method's `MARGIN`; None where plain rounds, needing
    (sd_plain / target)^2 full queries, would cost less than 1.25 times as much (`sd_plain` None: no test)."""
    if cost == 0 or sd_control == 0:
        n_full, n_control = math.ceil(MARGIN * (sd_diff / target) ** 2), 0
    else:
        scale = (sd_diff * math.sqrt(1 + cost) + sd_control * math.sqrt(cost)) / target**2
        n_full = math.ceil(MARGIN * scale * sd_diff / math.sqrt(1 + cost))
        n_control = math.ceil(MARGIN * scale * sd_control / math.sqrt(cost))
    plain = MARGIN * (sd_plain / target) ** 2 if sd_plain is not None else math.inf
    if 1.25 * _plan_cost((n_full, n_control), cost) > plain:
        return None
    return n_full, n_control


def _plan_cost(plan: tuple[int, int], cost: float) -> float:
    """A control-variate plan's cost in full queries."""
    return (1 + cost) * plan[0] + cost * plan[1]


def _control_values(data: DataMatrix, blocks: list[Tensor], sigma: float, m: int, config: EstimatorConfig,
                    generator: torch.Generator) -> Tensor:
    """The control variate c(x~) (over all of `blocks`) of m fresh queries, sources uniform over the data."""
    sources = stratified_sources(data.n, m, generator)
    out = []
    for idx in sources.split(config.batch_size):
        queries = _noisy(data.centered_rows(idx), sigma, generator)
        out.append(_subset_posterior_values(queries, blocks, sigma, data, config)[-1])
    return torch.cat(out)


def _subset_posterior_values(queries: Tensor, blocks: list[Tensor], sigma: float, data: DataMatrix,
                             config: EstimatorConfig) -> list[Tensor]:
    """Per-query values over the first 1, 2, ... of the disjoint row `blocks` (their stats merged)."""
    out, stats = [], None
    for block in blocks:
        part = posterior_stats(queries, block, sigma, chunk_size=config.chunk_size)
        stats = part if stats is None else stats.merge(part)
        out.append(_value(stats, data, config.form).cpu())
    return out


ZERO_BOUND_SOURCES = 256  # sources behind an all-zero level's bound (each costs a pass over the data)


def _spread_sample(idx: Tensor, k: int) -> Tensor:
    """At most k entries of idx, evenly spaced (a systematic sample)."""
    return idx if len(idx) <= k else idx[torch.linspace(0, len(idx) - 1, k).round().long()]


def zero_level_bound(data: DataMatrix, sources: Tensor, sigma: float,
                     chunk_size: int = DEFAULT_CHUNK) -> float:
    """An upper bound of J*(sigma) per dimension, estimated from sampled sources (mean + 3 standard errors):
    tr Var(x0 | x~) <= sum_n w_n ||x_n - x_s||^2 and E_eps[min(1, w_n / w_s)] = 2 Phi(-d_n / 2 sigma) for a
    query x~ = x_s + sigma eps, so J* <= E_s sum_{n != s} d_sn^2 2 Phi(-d_sn / 2 sigma) / D.

    The pairs are screened by their projected distance (a lower bound) where pruning built a projection, else
    by a float32 GEMM (with a margin for its rounding); the terms of the pairs within reach are computed in
    float64.  A pair out of reach has erfc(d / 2 sqrt(2) sigma) < erfc(26.5) ~ 1e-307: together
    they change the bound by less than N max d^2 1e-307, below float64's resolution of any bound we report."""
    rows, shift = data.kernel_rows  # centred once in memory (with their norms, `row_sq`), on disk per chunk
    row_sq = data.row_sq
    x_s = data.centered_rows(sources)
    x_s64 = x_s.double()
    sq_s = x_s64.pow(2).sum(1)
    scale = 1.0 / (2 * math.sqrt(2) * sigma)  # 2 Phi(-d / 2 sigma) = erfc(d scale); ndtr is 0 below -9
    reach = (26.5 / scale) ** 2
    rounding = (data.dim + 4) * torch.finfo(x_s.dtype).eps  # of the screen's d^2, relative to sq_s + sq
    proj = data.projection if isinstance(data.rows, Tensor) else None  # built by pruning, if it ran
    if proj is not None:
        z_s = proj.projected[sources.to(proj.projected.device)].to(x_s.device)
        z_s_sq = z_s.pow(2).sum(1)
    total = torch.zeros(len(sources), dtype=torch.float64, device=x_s.device)
    screening = True  # until a chunk shows that most pairs are within reach (large sigma)
    for start in range(0, data.n, chunk_size):
        x = as_rows(rows[start:start + chunk_size], x_s.device, x_s.dtype)
        if shift is not None:
            x = x - shift.to(x)
        sq = x.double().pow(2).sum(1) if row_sq is None else row_sq[start:start + len(x)].to(x.device)
        norms = sq_s[:, None] + sq[None, :]
        near = torch.arange(len(x), device=x.device)
        if screening and proj is not None:  # the projected distance, a lower bound (`kernel.Projection`)
            z = proj.projected[start:start + len(x)].to(x.device)
            z_sq = z.pow(2).sum(1)
            lower = torch.addmm(z_s_sq[:, None] + z_sq[None, :], z_s, z.T, alpha=-2)
            near = torch.nonzero((lower - 1e-9 * (z_s_sq[:, None] + z_sq[None, :]) <= reach).any(0)).flatten()
        elif screening:
            screen = torch.addmm(norms.to(x.dtype), x_s, x.T, alpha=-2).double()
            near = torch.nonzero((screen - rounding * norms <= reach).any(0)).flatten()
        screening = screening and len(near) < len(x) // 2
        if len(near):
            d2 = torch.addmm(norms[:, near], x_s64, x[near].double().T, alpha=-2).clamp_min_(0)
            total += (d2 * torch.special.erfc(d2.sqrt().mul_(scale))).sum(1)
    per = total.cpu() / data.dim  # the source itself has d = 0 and adds nothing
    spread = per.std().item() / math.sqrt(len(per)) if len(per) > 1 else per.item()
    return per.mean().item() + 3 * spread


def _clamped(value: float, sigma: float, form: str) -> float:
    """J* >= 0; the global form A - B can come out negative from Monte-Carlo cancellation: clamp, warn."""
    if not math.isfinite(value):
        raise FloatingPointError(f"non-finite J* estimate {value} at sigma = {sigma:.6g}")
    if value < 0:
        cause = "of A - B" if form == "global" else f"in the {form} estimate"
        warnings.warn(f"the {form} estimate gave J* = {value:.3g} < 0 at sigma = {sigma:.6g} (Monte-Carlo "
                      f"cancellation {cause}); clamped to 0, its standard error kept", stacklevel=3)
        return 0.0
    return value


def _value(stats, data: DataMatrix, form: str) -> Tensor:
    if form == "rb":
        v = stats.variance()
    else:
        v = data.mean_sq - stats.mean().pow(2).sum(1)
    return v / data.dim


def _noisy(x_src: Tensor, sigma: float, generator: torch.Generator, with_noise: bool = False):
    """Queries x_src + sigma eps (and eps, float64 on the CPU, with `with_noise`)."""
    # Noise is drawn on the CPU in float64 so results do not depend on the device or dtype.
    eps = torch.randn(x_src.shape, generator=generator, dtype=torch.float64)
    queries = x_src + (sigma * eps).to(device=x_src.device, dtype=x_src.dtype)
    return (queries, eps) if with_noise else queries


def _full_values(data, sigma, config, generator, progress, control: list[Tensor] | None = None):
    """Per-query values and their sources; with `control` (disjoint row blocks), also each query's values
    over the first 1, 2, ... blocks (`_subset_posterior_values`) and its control features (`_features`)."""
    sources = stratified_sources(data.n, config.queries, generator)
    out, controls = [], []
    features = []
    for idx in sources.split(config.batch_size):
        x_src = data.centered_rows(idx)
        queries, eps = _noisy(x_src, sigma, generator, with_noise=True)
        rows = _pruned_rows(data, queries, x_src, sigma, config) if config.prune else None
        kernel_rows, shift = data.kernel_rows
        if rows is not None:
            stats = posterior_stats(queries, kernel_rows[rows], sigma, shift=shift,
                                    chunk_size=config.chunk_size, row_sq=data.row_sq[rows])
        else:
            stats = sharded_posterior_stats(queries, kernel_rows, sigma, shift=shift,
                                            chunk_size=config.chunk_size, row_sq=data.row_sq)
        out.append(_value(stats, data, config.form).cpu())
        if control is not None:
            controls.append(_subset_posterior_values(queries, control, sigma, data, config))
            features.append(_features(x_src, eps, data))
        if progress is not None:
            progress(len(idx))
    if control is not None:
        return (torch.cat(out), sources, [torch.cat(c) for c in zip(*controls, strict=True)],
                torch.cat(features))
    return torch.cat(out), sources


def _pruned_rows(data: DataMatrix, queries: Tensor, x_src: Tensor, sigma: float, config) -> Tensor | None:
    """The rows that can matter to these queries (`kernel.candidate_rows`, the source distance as the
    reference), or None where pruning does not apply (rows on disk, several ranks) or keeps half or more.
    Once it keeps half or more at some sigma it is not tried again at that sigma or above (it can only keep
    more there), as the bound itself costs a pass over the projected rows."""
    if not isinstance(data.rows, Tensor) or (dist.is_available() and dist.is_initialized()):
        return None
    if sigma >= data.prune_fails_from:
        return None
    if data.projection is None:
        data.projection = Projection.of(data.rows, data.center)
    reference = (queries.double() - x_src.double()).pow(2).sum(1)
    rows = candidate_rows(queries, reference, data.projection, sigma, chunk_size=config.chunk_size)
    if len(rows) >= data.n // 2:
        data.prune_fails_from = min(data.prune_fails_from, sigma)
        return None
    return rows.to(data.rows.device)


def _subset_values(data, sigma, config, generator, progress) -> tuple[Tensor, int]:
    size = config.subset_size(data.n)
    log_w = -math.log(config.self_weight(data.n))
    per_block = subset_block_size(config, data.n)
    blocks = math.ceil(config.queries / per_block)
    out = []
    for _ in range(blocks):
        members = torch.randperm(data.n, generator=generator)[:size]
        subset = data.centered_rows(members)
        for first in range(0, per_block, config.batch_size):
            local = torch.arange(first, min(per_block, first + config.batch_size))
            queries = _noisy(subset[local], sigma, generator)
            stats = sharded_posterior_stats(queries, subset, sigma, self_index=local.to(data.device),
                                            self_log_weight=log_w, chunk_size=config.chunk_size)
            out.append(_value(stats, data, config.form).cpu())
            if progress is not None:
                progress(len(local))
    return torch.cat(out), per_block


def subset_block_size(config: EstimatorConfig, n: int) -> int:
    """Queries per random subset: at most L, and small enough for at least 32 independent blocks,
    whose means give the standard error (a subset costs only L rows to load, so blocks are cheap)."""
    return max(1, min(config.subset_size(n), config.queries // 32))


def level_generator(seed: int, sigma: float) -> torch.Generator:
    """A generator keyed by (seed, sigma), so a level's numbers do not depend on the rest of the grid."""
    key = hashlib.sha256(f"{seed}:{float(sigma):.17g}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:7], "little"))


class Estimator:
    """J*(sigma) on one dataset, optionally class-conditional (posterior within the query's class)."""

    def __init__(self, rows, config: EstimatorConfig = EstimatorConfig(), *, labels=None,
                 device="cpu", dtype=torch.float32):
        self.config = config
        self.data = DataMatrix(rows, device=device, dtype=dtype, chunk_size=config.chunk_size)
        self.classes: list[tuple[float, DataMatrix]] = []
        if labels is not None:
            labels = np.asarray(labels)
            if len(labels) != self.data.n:
                raise ValueError(f"{len(labels)} labels for {self.data.n} data points")
            for c in np.unique(labels):
                idx = np.nonzero(labels == c)[0]
                part = DataMatrix(take_rows(self.data.rows, idx), device=device, dtype=dtype,
                                  chunk_size=config.chunk_size)
                self.classes.append((len(idx) / self.data.n, part))
        config.subset_size(min([self.data.n] + [d.n for _, d in self.classes]))  # L <= N, checked early
        if not self.data_variance > 0:  # J* = 0 at every sigma; every ratio to the variance would be NaN
            within = " within each class" if self.classes else ""
            raise ValueError(f"the data has zero variance{within} (identical points): J* is 0 at every sigma")

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
                raise ValueError(f"sigma must be positive and finite, got {s}")
        done = dict(done or {})
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
                      "C_used": None if self.config.estimator == "full"
                      else self.config.self_weight(self.data.n),
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
            raise ValueError(f"total stderr must be positive and finite, got {total_stderr}")
        done = dict(done or {})
        sigmas = [float(s) for s in sigmas]
        grid = sorted(set(sigmas) | {s for s in done if min(sigmas) <= s <= max(sigmas)})
        base = replace(self.config, target_stderr=None)
        curve = self.curve(grid, seed, done, on_level, progress)
        done.update({s: LevelEstimate(s, v, e, q) for s, v, e, q in
                     zip(curve.sigma, curve.loss, curve.stderr, curve.settings["queries_used"], strict=True)})
        for _ in range(max_rounds):
            total = curve.total(objective, warn=False)
            if total.stderr <= total_stderr:
                break
            if (total.interpolation_error > interp_fraction * max(total.mc_stderr, total_stderr)
                    and len(grid) < max_levels):
                scores = curve.refinement_scores(objective)
                worst = np.argsort(scores)[::-1][:max(1, len(scores) // 8)]
                grid = sorted(set(grid) | {math.sqrt(grid[i] * grid[i + 1]) for i in worst})
                curve = self.curve(grid, seed, done, on_level, progress)
            else:
                room = total_stderr**2 - total.interpolation_stderr**2
                target = math.sqrt(max(room, (0.5 * total_stderr) ** 2))
                queries = _neyman_queries(curve, objective, 0.95 * target, base)
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


def _neyman_queries(curve: OptimalLossCurve, objective, target: float, config: EstimatorConfig) -> np.ndarray:
    """Queries per level for a Monte-Carlo stderr `target` of the total at the least total number of queries:
    m_i proportional to |dT/dJ_i| sd_i (sd_i the per-query standard deviation); never fewer than now."""
    used = np.asarray(curve.settings["queries_used"], dtype=float)
    weight = np.abs(curve.sensitivity(objective)) * curve.stderr * np.sqrt(used)
    if not weight.sum() > 0:
        return used.astype(int)
    want = np.ceil(weight * weight.sum() / target**2)
    return np.minimum(np.maximum(want, used), max(config.max_queries, used.max())).astype(int)
