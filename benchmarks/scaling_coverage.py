"""Coverage of the scaling fits' 95% intervals on synthetic studies with a planted exponent.

    python benchmarks/scaling_coverage.py --out results/benchmarks   # seeded; a few CPU-minutes

Two designs, each repeated with fresh noise:

- ``grouped``: 20 runs of 2 points with run effects, `scaling.fit` (bootstrap over runs): the plain
  percentile interval, the expanded one (what the library reports) and single points resampled instead of
  runs (the wrong unit).
- ``frontier``: the committed scaling study's shape (10 sizes x 3 seeds x 16 checkpoints, run effects),
  `frontier.frontier_study` (seeds resampled within sizes, the frontier re-chosen per resample): the
  corrected form's alpha and the plain form's alpha on J - J* (a power law when the floor is known).

Each rate comes with its binomial 95% band; nominal is 95%.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats

from lossfloor.core.files import atomic_write_text
from lossfloor.evaluate import bootstrap, scaling
from lossfloor.evaluate.frontier import Curves, frontier_study

ALPHA, BETA, FLOOR = -0.3, 4.0, 0.05


def _band(hits: int, n: int) -> list[float]:
    lo, hi = stats.binomtest(hits, n).proportion_ci(0.95)
    return [float(lo), float(hi)]


def grouped(reps: int, n_boot: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    compute = np.geomspace(1e9, 1e13, 40)
    labels = np.arange(40) * 20 // 40
    hits = {"percentile": 0, "expanded": 0, "single points": 0}
    for rep in range(reps):
        noise = 0.03 * rng.standard_normal(40) + 0.05 * rng.standard_normal(20)[labels]
        loss = FLOOR + BETA * compute**ALPHA * np.exp(noise)
        fit = scaling.fit("corrected", compute, loss, FLOOR, groups=labels, n_boot=n_boot, seed=rep)
        hits["expanded"] += ALPHA in fit.alpha_ci
        lo, hi = np.quantile(fit.boot.alpha, [0.025, 0.975])
        hits["percentile"] += lo <= ALPHA <= hi
        single = scaling.fit("corrected", compute, loss, FLOOR, n_boot=n_boot, seed=rep)
        hits["single points"] += ALPHA in single.alpha_ci
    return {k: {"coverage": v / reps, "band": _band(v, reps)} for k, v in hits.items()} | {
        "reps": reps, "n_boot": n_boot, "design": "20 runs x 2 points, run sd 0.05, point sd 0.03 (log)",
        "expanded_quantiles": list(bootstrap.expanded_quantiles(20))}


def frontier(reps: int, n_boot: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    steps = np.unique(np.geomspace(25, 8000, 16).astype(int))
    hits = {"corrected alpha": 0}
    widths = []
    for rep in range(reps):
        c, j, s, r = [], [], [], []
        for h in range(10):
            compute = 1.5**h * 1e9 * steps
            for k in range(3):
                noise = 0.05 * rng.standard_normal() + 0.02 * rng.standard_normal(len(steps))
                c.append(compute)
                j.append(FLOOR + BETA * compute**ALPHA * np.exp(noise))
                s.append(np.full(len(steps), h))
                r.append(np.full(len(steps), k))
        curves = Curves.from_points(*(np.concatenate(a) for a in (c, j, s, r)))
        study = frontier_study(curves, FLOOR, n_boot=n_boot, seed=rep, forms=("corrected",))
        lo, hi = study.interval(study.boot["corrected"]["alpha"])
        hits["corrected alpha"] += lo <= ALPHA <= hi
        widths.append(hi - lo)
    return {k: {"coverage": v / reps, "band": _band(v, reps)} for k, v in hits.items()} | {
        "reps": reps, "n_boot": n_boot, "median_width": float(np.median(widths)),
        "design": "10 sizes x 3 seeds x 16 checkpoints, run sd 0.05, point sd 0.02 (log)",
        "expanded_quantiles": list(Curves.quantiles(curves))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--reps", type=int, default=400)
    parser.add_argument("--n-boot", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = {"grouped": grouped(args.reps, args.n_boot, args.seed),
              "frontier": frontier(args.reps // 2, args.n_boot, args.seed + 1),
              "command": f"python benchmarks/scaling_coverage.py --reps {args.reps} --n-boot {args.n_boot} "
                         f"--seed {args.seed}"}
    lines = ["# Coverage of the scaling fits' 95% intervals (planted alpha = -0.3)", "",
             f"`{result['command']}`", "", "| design | interval | coverage | binomial 95% band | reps |",
             "|---|---|---|---|---|"]
    for design in ("grouped", "frontier"):
        d = result[design]
        for name, v in d.items():
            if isinstance(v, dict):
                lines.append(f"| {d['design']} | {name} | {v['coverage']:.3f} | "
                             f"[{v['band'][0]:.3f}, {v['band'][1]:.3f}] | {d['reps']} |")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "scaling_coverage.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(args.out / "scaling_coverage.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    assert all(math.isfinite(v["coverage"]) for d in ("grouped", "frontier") for v in result[d].values()
               if isinstance(v, dict))


if __name__ == "__main__":
    main()
