"""J*(sigma) from a top-k posterior (Analytic Diffusion Studio's) against the exact posterior.

Analytic Diffusion Studio's "optimal" denoiser is a softmax over the k nearest training rows of the noisy
query, found with a FAISS flat index (k = 200 in its CIFAR-10 config, 2,000 by default).  Here, per sigma of
a 16-level grid, the same queries x~ = x_src + sigma eps (distinct random sources, seeded per level) go to

- the exact posterior over all N rows (`floor.kernel.posterior_stats`, as `Estimator` calls it), and
- the top-k posterior for each k (`evaluate.topk`: the exact k nearest rows, softmax over those only),

and the per-query J* = tr Var(x0 | x~) / D are compared pairwise: the bias of top-k J* (mean of the paired
differences, its standard error), relative to the exact J* and as a fraction of the data variance, the
exact posterior mass the k rows hold, and the seconds each took.  `Estimator.level` (its own queries) is
run as well, as a check that the exact column is the package's J*.

    flock /tmp/lossfloor-heavy.lock env OMP_NUM_THREADS=1 python benchmarks/topk.py --out results/topk
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lossfloor.core.files import atomic_write_text
from lossfloor.data.load import load_dataset
from lossfloor.evaluate.topk import log_partition, nearest_rows, topk_posterior
from lossfloor.floor.config import EstimatorConfig
from lossfloor.floor.estimator import Estimator
from lossfloor.floor.excess import weighted_excess
from lossfloor.floor.kernel import posterior_stats
from lossfloor.objective.objective import get_objective

BATCH = 512  # queries per exact kernel call (EstimatorConfig's default batch_size)
# Biases below this fraction of the data variance are float32 round-off between the two code paths: with
# k >= N (digits, k = 2000) the top-k and exact J* differ by up to 4e-7 of the variance.
ROUNDOFF = 1e-5
OBJECTIVES = ("edm", "vp", "flow")  # the objective-weighted totals of the bias (floor/excess.py's weights)


def paired(diff: np.ndarray, base: np.ndarray) -> tuple[float, float, float, float]:
    """(mean diff, its SE, mean diff / mean base, that ratio's SE by the delta method)."""
    m = len(diff)
    bias, se = float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(m))
    ref = float(base.mean())
    if not ref > 0:
        return bias, se, math.nan, math.nan
    ratio = bias / ref
    return bias, se, ratio, float((diff - ratio * base).std(ddof=1) / math.sqrt(m) / ref)


def level(est: Estimator, sigma: float, queries: int, ks, seed: int, j: int, check: bool) -> list[dict]:
    """One sigma: the exact and every top-k J* on the same queries, one row per k."""
    data = est.data
    rows, shift = data.kernel_rows  # in-memory rows: centred once, shift None
    assert shift is None
    row_sq = data.row_sq
    gen = torch.Generator().manual_seed(seed * 1000 + j)
    m = min(queries, data.n)
    src = torch.randperm(data.n, generator=gen)[:m]
    q = rows[src] + sigma * torch.randn(m, data.dim, generator=gen).to(rows.dtype)

    start = time.perf_counter()
    exact = [posterior_stats(q[i:i + BATCH], rows, sigma, shift=shift, row_sq=row_sq)
             for i in range(0, m, BATCH)]
    t_exact = time.perf_counter() - start
    e = torch.cat([s.variance() for s in exact]).numpy() / data.dim
    # The posterior mass the k rows hold, from float64 logits on both sides: in float32 the logits' rounding
    # (|x~ . x| / sigma^2 x 6e-8) is nats at the smallest sigma, which the variances do not feel.
    q64, rows64 = q.double(), rows.double()
    log_z = torch.cat([log_partition(posterior_stats(q64[i:i + BATCH], rows64, sigma, row_sq=row_sq))
                       for i in range(0, m, BATCH)])
    var = est.data_variance
    check_loss = check_se = check_t = math.nan
    if check:
        start = time.perf_counter()
        ref = est.level(sigma, seed=seed)
        check_t, check_loss, check_se = time.perf_counter() - start, ref.loss, ref.stderr
    out = []
    for k in ks:
        kk = min(k, data.n)
        start = time.perf_counter()
        _, nb = nearest_rows(q, rows, kk, shift=shift, row_sq=row_sq)
        t_search = time.perf_counter() - start
        top = topk_posterior(q, rows, sigma, kk, shift=shift, row_sq=row_sq, neighbours=nb)
        t_topk = time.perf_counter() - start
        t = top.variance().numpy() / data.dim
        bias, se, rel, rel_se = paired(t - e, e)
        top64 = topk_posterior(q64, rows64, sigma, kk, row_sq=row_sq, neighbours=nb)
        mass = torch.exp(log_partition(top64) - log_z).clamp(max=1.0).numpy()
        out.append(dict(sigma=sigma, queries=m, k=k, k_used=kk, exact=float(e.mean()),
                        exact_se=float(e.std(ddof=1) / math.sqrt(m)), topk=float(t.mean()),
                        bias=bias, bias_se=se, rel_bias=rel, rel_bias_se=rel_se, bias_var=bias / var,
                        bias_var_se=se / var, missing_mass=float(1 - mass.mean()),
                        missing_mass_max=float(1 - mass.min()), seconds_exact=t_exact,
                        seconds_topk=t_topk, seconds_search=t_search, estimator=check_loss,
                        estimator_se=check_se, seconds_estimator=check_t, data_variance=var))
    return out


def markdown(name: str, n: int, dim: int, rows: list[dict]) -> str:
    var = rows[0]["data_variance"]
    head = f"### {name} (N = {n}, D = {dim}, data variance {var:.4f}, {rows[0]['queries']} queries per level)"
    lines = [head,
             "", "| sigma | exact J*/var | Estimator J*/var | k | top-k J*/var | bias / J* | bias / var | "
             "missing mass | s exact | s top-k (search) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rel = "—" if math.isnan(r["rel_bias"]) else f"{r['rel_bias']:+.2%} ± {r['rel_bias_se']:.2%}"
        k = f"{r['k']}" + (" (= N)" if r["k_used"] < r["k"] else "")
        lines.append(f"| {r['sigma']:.3g} | {r['exact'] / var:.4g} ± {r['exact_se'] / var:.1g} | "
                     f"{r['estimator'] / var:.4g} ± {r['estimator_se'] / var:.1g} | {k} | "
                     f"{r['topk'] / var:.4g} | {rel} | {r['bias_var']:+.2e} ± {r['bias_var_se']:.1e} | "
                     f"{r['missing_mass']:.2e} | {r['seconds_exact']:.2f} | {r['seconds_topk']:.2f} "
                     f"({r['seconds_search']:.2f}) |")
    lines.append("")
    for k in sorted({r["k"] for r in rows}):
        sub = [r for r in rows if r["k"] == k]
        worst = min(sub, key=lambda r: r["bias_var"])
        sig = [r["sigma"] for r in sub if abs(r["bias"]) > 3 * r["bias_se"] and abs(r["bias_var"]) > ROUNDOFF]
        crit = f"> 3 SE and > {ROUNDOFF:g} of the variance"
        where = (f"significant ({crit}) from sigma = {min(sig):.3g} to {max(sig):.3g}" if sig
                 else f"nowhere significant ({crit})")
        lines.append(f"- k = {k}: bias {where}; largest {worst['bias_var']:+.3e} ± "
                     f"{worst['bias_var_se']:.1e} of the data variance ({worst['rel_bias']:+.1%} of J*) at "
                     f"sigma = {worst['sigma']:.3g}; "
                     f"time {sum(r['seconds_topk'] for r in sub):.1f} s (the k-NN search "
                     f"{sum(r['seconds_search'] for r in sub):.1f} s) against "
                     f"{sum(r['seconds_exact'] for r in sub):.1f} s exact over the grid.")
        sigmas = [r["sigma"] for r in sub]
        for name in OBJECTIVES:
            obj = get_objective(name)
            floor = weighted_excess(obj, sigmas, [r["exact"] for r in sub])
            bias = weighted_excess(obj, sigmas, [r["bias"] for r in sub], [r["bias_se"] for r in sub])
            lines.append(f"  - {name}-weighted total over the grid (covers {floor.coverage:.1%} of its "
                         f"p(sigma)): bias {bias.value:+.3g} ± {bias.stderr:.1g} = "
                         f"{bias.value / floor.value:+.2%} ± {bias.stderr / floor.value:.2%} of the exact "
                         f"{floor.value:.4g}")
    return "\n".join(lines) + "\n"


def render(results: list[dict]) -> str:
    """The markdown tables of every dataset in `results` (topk.csv's rows)."""
    text = ["## Top-k posterior against the exact posterior: J*(sigma) on the same queries", ""]
    for name in dict.fromkeys(r["dataset"] for r in results):
        rows = [r for r in results if r["dataset"] == name]
        text.append(markdown(name, rows[0]["n"], rows[0]["dim"], rows))
    return "\n".join(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion-mnist", "digits"])
    parser.add_argument("--queries", type=int, default=512, help="queries per level (capped at N)")
    parser.add_argument("--digits-queries", type=int, default=1438, help="queries per level on digits")
    parser.add_argument("--ks", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--sigma-min", type=float, default=0.002)
    parser.add_argument("--sigma-max", type=float, default=80.0)
    parser.add_argument("--levels", type=int, default=16)
    parser.add_argument("--no-check", action="store_true", help="skip the Estimator.level check column")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--render", action="store_true", help="rewrite topk.md from topk.json only")
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads((args.out / "topk.json").read_text())
        atomic_write_text(args.out / "topk.md", render(saved["rows"]))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    grid = np.geomspace(args.sigma_min, args.sigma_max, args.levels)
    results = []
    for name in args.datasets:
        ds = load_dataset(name)
        queries = args.digits_queries if name == "digits" else args.queries
        est = Estimator(ds.rows(), EstimatorConfig("full", queries=min(queries, len(ds))))
        rows = []
        for j, sigma in enumerate(grid):
            rows += level(est, float(sigma), queries, args.ks, args.seed, j, not args.no_check)
            r = rows[-1]
            print(f"{name} sigma={sigma:.3g} exact={r['exact']:.4g} ({r['seconds_exact']:.1f} s) "
                  + " ".join(f"k={x['k']}: bias/var={x['bias_var']:+.2e}±{x['bias_var_se']:.1e} "
                             f"({x['seconds_topk']:.1f} s)" for x in rows[-len(args.ks):]), flush=True)
        results += [dict(dataset=name, n=est.data.n, dim=est.data.dim, **r) for r in rows]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(results[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(results)
    atomic_write_text(args.out / "topk.csv", buf.getvalue())
    atomic_write_text(args.out / "topk.md", render(results))
    settings = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "grid": grid.tolist(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                "machine": platform.machine()}
    atomic_write_text(args.out / "topk.json", json.dumps({"settings": settings, "rows": results}, indent=1))
    command = "flock /tmp/lossfloor-heavy.lock env OMP_NUM_THREADS=1 python benchmarks/topk.py " + \
        " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    atomic_write_text(args.out / "COMMAND", command + "\n")


if __name__ == "__main__":
    main()
