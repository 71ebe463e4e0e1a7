"""Cost of the full Fashion-MNIST curve at a fixed accuracy: issue 9's method against today's, in one run.

Every method estimates the default 32-level grid (0.002 .. 80) with the full estimator until every level's
standard error is at most `--target` x the data variance:

- ``before (<commit>)``: rounds of `--queries` per level with the code of `--before` (default f312c20, the
  project when issue 9 was filed, measured there at 1 min 59 s), run from `git archive` of that commit in a
  subprocess of this run;
- ``rounds``: the same rounds with today's kernel;
- ``adaptive``: a first round of `--min-queries`, then what the measured spread needs, half at a time;
- ``control variates``: adaptive, with control variates (`--control-subset`) and exact pruning
  (`estimate --min-queries 64 --control-subset 2048 --prune`).

Every method runs `--repeats` times, interleaved (same seed, so the same numbers; only the time varies). It
prints the median seconds with each run's, the full-dataset and the control (subset) queries, the worst
stderr / variance, the EDM total and the largest level difference from ``rounds`` in combined standard
errors, with the load average.

    flock /tmp/lossfloor-heavy.lock python benchmarks/curve_cost.py --out results/benchmarks
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

GRID = np.geomspace(0.002, 80.0, 32)  # the CLI's default grid
REPO = Path(__file__).resolve().parents[1]


def run(config: dict, seed: int) -> dict:
    """One curve with `EstimatorConfig(**config)` of whichever lossfloor is imported."""
    from lossfloor.data.load import load_dataset
    from lossfloor.floor.config import EstimatorConfig
    from lossfloor.floor.estimator import Estimator
    from lossfloor.objective.objective import get_objective

    rows = load_dataset("fashion-mnist").rows()
    load = os.getloadavg()[0]
    start = time.perf_counter()
    curve = Estimator(rows, EstimatorConfig(**config)).curve(GRID, seed=seed)
    seconds = time.perf_counter() - start
    total = curve.total(get_objective("edm"))
    control = curve.settings.get("control_queries_used", [0] * len(GRID))
    return {"seconds": seconds, "load_before": load, "load_after": os.getloadavg()[0], "config": config,
            "queries": int(sum(curve.settings["queries_used"])), "control_queries": int(sum(control)),
            "queries_used": curve.settings["queries_used"], "control_queries_used": control,
            "loss": curve.loss.tolist(), "stderr": curve.stderr.tolist(),
            "worst_stderr_over_variance": float(np.max(curve.stderr) / curve.data_variance),
            "edm_total": total.value, "edm_total_stderr": total.stderr}


def run_before(commit: str, config: dict, seed: int) -> dict:
    """`run` with the package as it was at `commit` (git archive of its src/), in a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "src"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        env = {**os.environ, "PYTHONPATH": str(Path(tmp) / "src")}
        worker = [sys.executable, __file__, "--worker", json.dumps({"config": config, "seed": seed})]
        done = subprocess.run(worker, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _line(name: str, r: dict) -> str:
    runs = ", ".join(f"{t:.1f}" for t in r["seconds_all"])
    return (f"| {name} | {r['seconds']:.1f} ({runs}) | {r['queries']} | {r['control_queries']} | "
            f"{r['worst_stderr_over_variance']:.2e} | {r['edm_total']:.5f} ± {r['edm_total_stderr']:.5f} | "
            f"{r['load_before']:.1f} -> {r['load_after']:.1f} |")


def max_level_z(a: dict, b: dict) -> float:
    """The largest |difference| of two curves' levels in units of their combined standard error."""
    pairs = zip(a["loss"], b["loss"], a["stderr"], b["stderr"], strict=True)
    z = [abs(x - y) / math.hypot(e, f) for x, y, e, f in pairs if math.hypot(e, f) > 0]
    return max(z) if z else 0.0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=2e-3, help="stderr goal / variance at every level")
    parser.add_argument("--queries", type=int, default=1024, help="round size of the rounds methods")
    parser.add_argument("--min-queries", type=int, default=64, help="first round of the adaptive methods")
    parser.add_argument("--control-subset", type=int, default=2048, help="L of the control variate")
    parser.add_argument("--before", default="f312c20", help="commit of the baseline method")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all methods, interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="folder for curve_cost.json / curve_cost.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # JSON {config, seed}: run one curve, print JSON
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(run(job["config"], job["seed"])))
        return
    from lossfloor.core.files import atomic_write_text

    print(f"Fashion-MNIST, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}",
          flush=True)
    rounds = {"estimator": "full", "queries": args.queries, "target_stderr": args.target}
    adaptive = {**rounds, "min_queries": args.min_queries}
    methods = {f"before ({args.before})": lambda: run_before(args.before, rounds, args.seed),
               "rounds": lambda: run(rounds, args.seed),
               "adaptive": lambda: run(adaptive, args.seed),
               "control variates": lambda: run({**adaptive, "control_subset": args.control_subset,
                                                "prune": True}, args.seed)}
    given = argv if argv is not None else sys.argv[1:]
    result = {"command": "python benchmarks/curve_cost.py " + " ".join(given), "grid": GRID.tolist(),
              "target": args.target, "methods": {}}
    for _ in range(args.repeats):  # the same seed: every repeat gives the same numbers, only the time varies
        for name, fn in methods.items():
            r = fn()
            seen = result["methods"].setdefault(name, {**r, "seconds_all": []})
            seen["seconds_all"].append(r["seconds"])
            seen["seconds"] = statistics.median(seen["seconds_all"])
            print(f"{name:22s} {r['seconds']:7.1f} s  {r['queries']:6d} + {r['control_queries']:6d} control "
                  f"queries  worst stderr/var {r['worst_stderr_over_variance']:.2e}  EDM total "
                  f"{r['edm_total']:.5f} ± {r['edm_total_stderr']:.5f}  (load {r['load_before']:.1f} -> "
                  f"{r['load_after']:.1f})", flush=True)
    found = result["methods"]
    base, new = found[f"before ({args.before})"], found["control variates"]
    result["speedup_vs_before"] = base["seconds"] / new["seconds"]
    result["speedup_vs_rounds"] = found["rounds"]["seconds"] / new["seconds"]
    result["max_level_z_vs_rounds"] = {k: max_level_z(v, found["rounds"]) for k, v in found.items()}
    lines = [f"Fashion-MNIST full curve, 32 levels, every level's stderr <= {args.target:g} x variance; "
             f"{torch.get_num_threads()} threads; one process, the methods interleaved in this order, "
             f"{args.repeats} rounds.", "",
             "| method | seconds (median; each run) | full queries | control queries | worst stderr/var | "
             "EDM total | load avg before -> after |", "|---|---|---|---|---|---|---|"]
    lines += [_line(name, r) for name, r in found.items()]
    z = ", ".join(f"{k} {v:.2f}" for k, v in result["max_level_z_vs_rounds"].items() if k != "rounds")
    lines += ["", f"control variates (medians): {result['speedup_vs_before']:.2f}x faster than "
              f"{args.before}'s rounds, "
              f"{result['speedup_vs_rounds']:.2f}x faster than today's rounds; largest level difference from "
              f"today's rounds: {z} combined standard errors."]
    print("\n".join(lines))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "curve_cost.json", json.dumps(result, indent=1))
        atomic_write_text(args.out / "curve_cost.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
