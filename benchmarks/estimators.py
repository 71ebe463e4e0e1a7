"""Accuracy per compute of the optimal-loss estimators on full Fashion-MNIST (N = 60000, D = 784).

1. Pilot: the full estimator at every level of the default 32-level grid, in the Rao-Blackwellised (rb) and
   the paper's global (A - B) form, from the same queries; the per-query standard deviation of each form gives
   the queries, FLOPs and time each level needs for a standard error of `--target` x the data variance.
2. At a few sigma around the critical region: a full-estimator reference, then dol, snis and cdol (several L
   and C), each with its error against the reference and the FLOPs it spent (4 M L D for M queries against L
   rows; 4 M N D for full).

    python benchmarks/estimators.py --out results/estimators
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lossfloor.core.files import atomic_write_text
from lossfloor.data.load import load_dataset
from lossfloor.floor.config import EstimatorConfig
from lossfloor.floor.estimator import Estimator

GRID = np.geomspace(0.002, 80.0, 32)  # the CLI's default grid
LEVELS = (GRID[18], GRID[20], GRID[22], GRID[24])  # sigma 0.94, 1.86, 3.69, 7.31: J*/var from 1e-3 to 0.6


def subset_configs(n: int, queries: int) -> list[tuple[str, EstimatorConfig]]:
    """The subset estimators compared against full: dol, snis and cdol over L and C."""
    out = [(f"cdol L={size}", EstimatorConfig("cdol", queries=queries, subset=size))
           for size in (1024, 4096, 16384)]
    ratio = (n - 1) / (4096 - 1)
    out += [(f"cdol L=4096 C={ratio:.1f}", EstimatorConfig("cdol", queries=queries, subset=4096, C=ratio)),
            ("dol L=4096", EstimatorConfig("dol", queries=queries, subset=4096)),
            ("snis L=4096", EstimatorConfig("snis", queries=queries, subset=4096))]
    return out


def run(rows: torch.Tensor, name: str, config: EstimatorConfig, sigma: float, seed: int) -> dict:
    """One level with one estimator: value, stderr, FLOPs, seconds."""
    est = Estimator(rows, config)
    start = time.perf_counter()
    level = est.level(float(sigma), seed=seed)
    seconds = time.perf_counter() - start
    n, dim = est.data.n, est.data.dim
    width = config.strategy.cost(config, n)  # data rows behind one query
    flops = 4.0 * level.queries * width * dim
    return {"name": name, "sigma": float(sigma), "loss": level.loss, "stderr": level.stderr,
            "queries": level.queries, "flops": flops, "seconds": seconds, "gflops": flops / seconds / 1e9,
            "per_query_sd": level.stderr * math.sqrt(level.queries)}


def pilot(rows, queries: int, seed: int, log) -> dict:
    """Both full forms at every grid level, with their per-query standard deviations."""
    out = {"rb": [], "global": []}
    for form in out:
        config = EstimatorConfig("full", queries=queries, form=form)
        for sigma in GRID:
            out[form].append(run(rows, f"full {form}", config, sigma, seed))
        log(f"pilot {form}: {sum(r['seconds'] for r in out[form]):.0f} s")
    return out


def budget(levels: list[dict], target_se: float, n: int, dim: int, rate: float, fixed: int | None) -> dict:
    """Queries, FLOPs and seconds for the whole grid: `fixed` queries per level, or just enough per level."""
    if fixed is not None:
        queries = [fixed] * len(levels)
    else:
        queries = [max(2, math.ceil((r["per_query_sd"] / target_se) ** 2)) for r in levels]
    flops = sum(4.0 * q * n * dim for q in queries)
    worst_se = max(r["per_query_sd"] / math.sqrt(q) for r, q in zip(levels, queries, strict=True))
    return {"queries": int(sum(queries)), "max_queries_per_level": int(max(queries)), "flops": flops,
            "seconds": flops / rate / 1e9, "worst_stderr": worst_se}


def plot(compare: list[dict], pilot_rows: dict, variance: float, n: int, dim: int, path: Path) -> None:
    """Error / data variance against FLOPs, one panel per sigma, log-log."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sigmas = sorted({r["sigma"] for r in compare})
    fig, axes = plt.subplots(1, len(sigmas), figsize=(4.2 * len(sigmas), 4.0), sharey=True)
    names = [r["name"] for r in compare if r["sigma"] == sigmas[0] and not r["name"].startswith("full")]
    colors = dict(zip(names, plt.cm.tab10(np.arange(len(names))), strict=True))
    for ax, sigma in zip(np.atleast_1d(axes), sigmas, strict=True):
        lowest = min(r["flops"] for r in compare)
        flops = np.geomspace(lowest / 3, 1e14, 50)
        for form, style in (("rb", "-"), ("global", "--")):
            sd = next(r["per_query_sd"] for r in pilot_rows[form] if abs(r["sigma"] - sigma) < 1e-12 * sigma)
            ax.plot(flops, sd / np.sqrt(flops / (4.0 * n * dim)) / variance, "k" + style,
                    label=f"full {form}: standard error")
        for r in compare:
            if r["sigma"] != sigma or r["name"].startswith("full"):
                continue
            err = max(abs(r["error"]), 1e-9 * variance)
            ax.errorbar(r["flops"], err / variance, yerr=r["error_stderr"] / variance, fmt="o",
                        color=colors[r["name"]], label=f"{r['name']}: |error|", capsize=2)
        ax.axhline(2e-3, color="gray", lw=0.8, ls=":", label="goal: 0.2% of the variance")
        ax.set(xscale="log", yscale="log", title=f"sigma = {sigma:.3g}", xlabel="FLOPs per level")
    np.atleast_1d(axes)[0].set_ylabel("error / data variance")
    np.atleast_1d(axes)[-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Fashion-MNIST (N = {n}, D = {dim}): estimator error against FLOPs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict) -> str:
    """The comparison table and the goal check as markdown."""
    var = result["data_variance"]
    lines = ["| sigma | estimator | queries | GFLOP | seconds | J*/var | stderr/var | (est - ref)/var |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["compare"]:
        err = "reference"
        if not r["name"].startswith("full"):
            err = f"{r['error'] / var:+.2e} ± {r['error_stderr'] / var:.1e}"
        lines.append(f"| {r['sigma']:.3g} | {r['name']} | {r['queries']} | {r['flops'] / 1e9:.0f} | "
                     f"{r['seconds']:.1f} | {r['loss'] / var:.4f} | {r['stderr'] / var:.1e} | {err} |")
    lines += ["", "| full-curve recipe (32 levels) | queries | TFLOP | minutes at the measured rate | "
              "worst stderr/var |", "|---|---|---|---|---|"]
    for key, b in result["budgets"].items():
        lines.append(f"| {key} | {b['queries']} | {b['flops'] / 1e12:.1f} | {b['seconds'] / 60:.1f} | "
                     f"{b['worst_stderr'] / var:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pilot-queries", type=int, default=128, help="queries per level of the pilot")
    parser.add_argument("--reference-queries", type=int, default=2048, help="full queries per level")
    parser.add_argument("--subset-queries", type=int, default=4096, help="queries per subset estimator")
    parser.add_argument("--target", type=float, default=2e-3, help="stderr goal / variance")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plot-only", action="store_true", help="redraw the figure from estimators.json")
    args = parser.parse_args(argv)
    if args.plot_only:
        saved = json.loads((args.out / "estimators.json").read_text())
        plot(saved["compare"], saved["pilot"], saved["data_variance"], saved["n"], saved["dim"],
             args.out / "estimators.png")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - started:6.0f} s] {msg}", flush=True)

    ds = load_dataset("fashion-mnist")
    rows = ds.rows()
    n, dim = rows.shape
    variance = Estimator(rows).data.variance
    target_se = args.target * variance
    log(f"Fashion-MNIST N = {n}, D = {dim}, variance {variance:.5f}, {torch.get_num_threads()} threads, "
        f"load {os.getloadavg()[0]:.1f}")
    pilot_rows = pilot(rows, args.pilot_queries, args.seed, log)

    compare = []
    for sigma in LEVELS:
        reference = EstimatorConfig("full", queries=args.reference_queries)
        ref = run(rows, "full rb", reference, sigma, args.seed + 1)
        compare.append(ref)
        for name, config in subset_configs(n, args.subset_queries):
            r = run(rows, name, config, sigma, args.seed + 2)
            r["error"] = r["loss"] - ref["loss"]
            r["error_stderr"] = math.hypot(r["stderr"], ref["stderr"])
            compare.append(r)
        log(f"sigma {sigma:.3g}: " + ", ".join(f"{r['name']} {r['loss']:.5f}" for r in compare[-7:]))

    # Throughput of the full estimator as measured here, under whatever else ran on the machine.
    full_runs = [r for r in compare if r["name"] == "full rb"] + pilot_rows["rb"] + pilot_rows["global"]
    rate = sum(r["flops"] for r in full_runs) / sum(r["seconds"] for r in full_runs) / 1e9
    glob = pilot_rows["global"]
    budgets = {
        "rb, queries per level just enough": budget(pilot_rows["rb"], target_se, n, dim, rate, None),
        "rb, the same queries at every level": budget(
            pilot_rows["rb"], target_se, n, dim, rate,
            max(2, math.ceil(max(r["per_query_sd"] for r in pilot_rows["rb"]) ** 2 / target_se**2))),
        "global (paper's A - B), just enough": budget(glob, target_se, n, dim, rate, None),
        "paper's recipe: global, M = 2N per level": budget(glob, target_se, n, dim, rate, 2 * n),
        "paper's recipe: global, M = 3N per level": budget(glob, target_se, n, dim, rate, 3 * n),
    }
    command = "python benchmarks/estimators.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"command": command,
              "n": n, "dim": dim, "data_variance": variance, "target_fraction": args.target,
              "threads": torch.get_num_threads(), "measured_gflops": rate, "fingerprint": ds.fingerprint,
              "total_seconds": time.perf_counter() - started, "pilot": pilot_rows, "compare": compare,
              "budgets": budgets}
    atomic_write_text(args.out / "estimators.json", json.dumps(result, indent=1))
    atomic_write_text(args.out / "estimators.md", markdown(result))
    plot(compare, pilot_rows, variance, n, dim, args.out / "estimators.png")
    print(markdown(result))
    log(f"measured {rate:.1f} GFLOP/s; wrote {args.out}")


if __name__ == "__main__":
    main()
