"""Time of the Gaussian-mixture kernel (`mixture_posterior_stats`, stochastic latents) against the point
kernel (`posterior_stats`) at the same N, D and M, in one process, timed interleaved (median of repeats).

The point kernel does two GEMMs per chunk (2 M C D multiply-adds); the mixture kernel one GEMM of [x~^2, x~]
against 2C rows of 2D coefficients and one of the weights against C x 2D (6 M C D): the aim is a ratio of at
most 3.  Both are called as the estimators call them (rows centred once, the point kernel's row norms
cached; the mixture kernel's per-chunk coefficients at sigma built once per level, as `mixture_values` does
up to `COEFFICIENT_BYTES`), and the mixture kernel also with its coefficients built in every call.  Each
ratio is the median over the repeats with its spread (min..max of the per-repeat ratios).

    python benchmarks/mixture_kernel.py --out results/benchmarks
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from lossfloor.core.files import atomic_write_text
from lossfloor.floor.kernel import DEFAULT_CHUNK, posterior_stats
from lossfloor.floor.matrix import DataMatrix
from lossfloor.floor.mixture import (
    MixtureMatrix,
    mixture_coefficients,
    mixture_posterior_stats,
    reference_weight,
)

SHAPES = ((16384, 1024), (8192, 4096))  # latents of 4 x 16 x 16 and 4 x 32 x 32


def time_shape(n: int, dim: int, queries: int, repeats: int, chunk_size: int, seed: int) -> dict:
    """Median seconds of each kernel at one shape and the per-repeat ratio mixture / point."""
    gen = torch.Generator().manual_seed(seed)
    means = 0.5 * torch.randn(n, dim, generator=gen)
    std = 0.05 + 0.1 * torch.rand(n, dim, generator=gen)
    sigma = 0.3 * dim**0.5 / 8  # a spread posterior: every weight is computed
    points = DataMatrix(means, chunk_size=chunk_size)
    mixture = MixtureMatrix(means, std, chunk_size=chunk_size)
    rows, _ = points.kernel_rows
    row_sq = points.row_sq
    q = rows[:queries] + 0.3 * torch.randn(queries, dim, generator=gen)
    means, beta = mixture.kernel_rows[0], reference_weight(mixture.std, sigma)
    coefficients = mixture_coefficients(means, mixture.std, sigma, beta, torch.float32, means.device,
                                        chunk_size)
    fns = {
        "point": lambda: posterior_stats(q, rows, sigma, chunk_size=chunk_size, row_sq=row_sq),
        "mixture": lambda: mixture_posterior_stats(q, means, mixture.std, sigma, beta=beta,
                                                   chunk_size=chunk_size, coefficients=coefficients),
        "mixture, coefficients per call": lambda: mixture_posterior_stats(q, means, mixture.std, sigma,
                                                                          chunk_size=chunk_size),
    }
    times = {name: [] for name in fns}
    for _ in range(repeats + 1):  # interleaved, so load from other processes hits both alike
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    out = {"n": n, "dim": dim, "queries": queries, "sigma": sigma, "seconds_all": {k: v[1:] for k, v in
                                                                                   times.items()}}
    for name in ("mixture", "mixture, coefficients per call"):
        ratios = [m / p for m, p in zip(times[name][1:], times["point"][1:], strict=True)]  # 1st: warm-up
        out[name] = {"seconds": statistics.median(times[name][1:]), "ratio_median": statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios)}
    out["point_seconds"] = statistics.median(times["point"][1:])
    return out


def markdown(rows: list, meta: dict) -> str:
    lines = [f"Command: `{meta['command']}`", "",
             f"Device {meta['device']}, {meta['threads']} threads, torch {meta['torch']}, dtype float32, "
             f"M = {rows[0]['queries']} queries, chunks of {meta['chunk_size']} rows, median of "
             f"{meta['repeats']} repeats, load average before the run {meta['load_before']}.", "",
             "| N | D | point kernel s | mixture kernel | s | ratio to point (median, min..max) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        for name in ("mixture", "mixture, coefficients per call"):
            m = r[name]
            lines.append(f"| {r['n']} | {r['dim']} | {r['point_seconds']:.3f} | {name} | "
                         f"{m['seconds']:.3f} | "
                         f"{m['ratio_median']:.2f} ({m['ratio_min']:.2f}..{m['ratio_max']:.2f}) |")
    if "load_after" in meta:
        lines += ["", f"load average after the run {meta['load_after']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=512, help="M, queries per batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shapes", default=",".join(f"{n}x{d}" for n, d in SHAPES), help="NxD,NxD")
    parser.add_argument("--out", type=Path, help="folder for mixture_kernel.json and mixture_kernel.md")
    args = parser.parse_args(argv)
    meta = {"device": platform.processor() or "cpu", "threads": torch.get_num_threads(),
            "torch": torch.__version__, "repeats": args.repeats, "chunk_size": args.chunk_size,
            "load_before": round(os.getloadavg()[0], 2), "command": "python benchmarks/mixture_kernel.py "
            + " ".join(argv if argv is not None else sys.argv[1:])}
    rows = []
    for shape in args.shapes.split(","):
        n, dim = (int(v) for v in shape.lower().split("x"))
        rows.append(time_shape(n, dim, args.queries, args.repeats, args.chunk_size, args.seed))
        print(markdown(rows, meta), flush=True)
    meta["load_after"] = round(os.getloadavg()[0], 2)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        doc = json.dumps({"meta": meta, "rows": rows}, indent=1)
        atomic_write_text(args.out / "mixture_kernel.json", doc)
        atomic_write_text(args.out / "mixture_kernel.md", markdown(rows, meta))


if __name__ == "__main__":
    main()
