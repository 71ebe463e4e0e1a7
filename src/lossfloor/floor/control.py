"""Control variates for a level: each query's posterior variance over a fixed subset, its mean from cheap
queries."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from lossfloor.floor.config import MARGIN, EstimatorConfig, LevelEstimate, stratified_sources
from lossfloor.floor.matrix import DataMatrix
from lossfloor.floor.values import clamped, full_values, noisy, subset_posterior_values


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
    v, idx, cs, f = full_values(data, sigma, pilot, generator, progress, control=blocks)
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
            v, _, cs, f = full_values(data, sigma, rnd, generator, progress, control=blocks)
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
            return LevelEstimate(float(sigma), clamped(loss, sigma, "control-variate"), se,
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
        queries = noisy(data.centered_rows(idx), sigma, generator)
        out.append(subset_posterior_values(queries, blocks, sigma, data, config)[-1])
    return torch.cat(out)
