"""Cost of the full Fashion-MNIST curve at a fixed accuracy: today's rounds against adaptive rounds, one run.

Both estimate the default 32-level grid (0.002 .. 80) with the full estimator until every level's standard
error is at most `--target` x the data variance:

- ``rounds``: rounds of `--queries` queries per level (`EstimatorConfig(queries=1024, target_stderr=...)`,
  the method behind results/fashion-mnist-precise/);
- ``adaptive``: a first round of `--min-queries`, then as many queries as the measured spread needs, and an
  upper bound instead of a zero standard error where every query is exactly 0 (`min_queries=...`).

It prints the seconds, the queries, the worst stderr / variance, the largest level difference in units of the
combined standard error, both EDM totals and the speed-up; the machine's load average is printed with them.

    flock /tmp/lossfloor-heavy.lock python benchmarks/curve_cost.py --out results/benchmarks
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

from lossfloor.data import load_dataset
from lossfloor.estimators import Estimator, EstimatorConfig
from lossfloor.files import atomic_write_text
from lossfloor.formulation import get_objective

GRID = np.geomspace(0.002, 80.0, 32)  # the CLI's default grid


def run(rows, config: EstimatorConfig, seed: int) -> dict:
    """One curve: seconds, queries, levels and the EDM total."""
    est = Estimator(rows, config)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    curve = est.curve(GRID, seed=seed)
    seconds = time.perf_counter() - start
    total = curve.total(get_objective("edm"))
    var = curve.data_variance
    return {"seconds": seconds, "load_before": load, "load_after": os.getloadavg()[0],
            "queries": int(sum(curve.settings["queries_used"])),
            "queries_used": curve.settings["queries_used"],
            "loss": curve.loss.tolist(), "stderr": curve.stderr.tolist(),
            "worst_stderr_over_variance": float(np.max(curve.stderr) / var),
            "edm_total": total.value, "edm_total_stderr": total.stderr}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=2e-3, help="stderr goal / variance at every level")
    parser.add_argument("--queries", type=int, default=1024, help="round size of today's method")
    parser.add_argument("--min-queries", type=int, default=64, help="first round of the adaptive method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="folder for curve_cost.json / curve_cost.md")
    args = parser.parse_args(argv)
    rows = load_dataset("fashion-mnist").rows()
    print(f"Fashion-MNIST {tuple(rows.shape)}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    today = EstimatorConfig("full", queries=args.queries, target_stderr=args.target)
    new = EstimatorConfig("full", queries=args.queries, target_stderr=args.target,
                          min_queries=args.min_queries)
    given = argv if argv is not None else sys.argv[1:]
    result = {"command": "python benchmarks/curve_cost.py " + " ".join(given), "grid": GRID.tolist(),
              "target": args.target}
    for name, config in (("adaptive", new), ("rounds", today)):
        result[name] = run(rows, config, args.seed)
        r = result[name]
        print(f"{name:9s} {r['seconds']:7.1f} s  {r['queries']:6d} queries  worst stderr/var "
              f"{r['worst_stderr_over_variance']:.2e}  EDM total {r['edm_total']:.5f} ± "
              f"{r['edm_total_stderr']:.5f}  (load {r['load_before']:.1f} -> {r['load_after']:.1f})",
              flush=True)
    a, b = result["adaptive"], result["rounds"]
    pairs = zip(a["loss"], b["loss"], a["stderr"], b["stderr"], strict=True)
    z = [abs(x - y) / math.hypot(e, f) for x, y, e, f in pairs if math.hypot(e, f) > 0]
    result["speedup"] = b["seconds"] / a["seconds"]
    result["query_ratio"] = b["queries"] / a["queries"]
    result["max_level_z"] = max(z) if z else 0.0
    lines = [f"Fashion-MNIST full curve, 32 levels, every level's stderr <= {args.target:g} x variance; "
             f"{torch.get_num_threads()} threads; one process, adaptive first.", "",
             "| method | seconds | queries | worst stderr/var | EDM total | load avg before -> after |",
             "|---|---|---|---|---|---|"]
    for name in ("rounds", "adaptive"):
        r = result[name]
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['queries']} | "
                     f"{r['worst_stderr_over_variance']:.2e} | {r['edm_total']:.5f} ± "
                     f"{r['edm_total_stderr']:.5f} | {r['load_before']:.1f} -> {r['load_after']:.1f} |")
    lines += ["", f"speed-up (seconds) {result['speedup']:.2f}x, queries {result['query_ratio']:.2f}x; "
              f"largest level difference {result['max_level_z']:.2f} combined standard errors."]
    print("\n".join(lines))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "curve_cost.json", json.dumps(result, indent=1))
        atomic_write_text(args.out / "curve_cost.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
