"""Throughput of the posterior kernel against torch matmul of the same shapes, in one process.

One batch = M queries against all N data rows: two GEMMs, (M x D)(D x N) for the logits and (M x N)(N x D) for
the weighted sum, 4 M N D FLOPs.  The ways to compute it, timed interleaved (median of repeats):

- ``matmul``: the two GEMMs alone, unchunked: the baseline of every ratio.
- ``matmul, chunks``: the two GEMMs over chunks of `--chunk-size` rows: what the kernel's GEMMs alone cost.
- ``naive``: torch.cdist + softmax + matmul, materialising the (M, N) distances.
- ``lossfloor``: `posterior_stats` as the estimators call it (rows centred once, `DataMatrix.kernel_rows`, and
  their squared norms computed once, `DataMatrix.row_sq`; chunked online log-sum-exp).
- ``lossfloor, chunks of 8192``: the same at the chunk size used before issue 9's kernel work.

Each ratio is reported as the median over the repeats with its spread (min..max of the per-repeat ratios).

    python benchmarks/kernel.py --out results/benchmarks
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

SHAPES = ((60000, 784), (50000, 3072))


def methods(queries: torch.Tensor, data: torch.Tensor, sigma: float, chunk_size: int) -> dict:
    """The computations of the same posterior means, as zero-argument callables."""
    matrix = DataMatrix(data, device=data.device, chunk_size=chunk_size)
    rows, shift = matrix.kernel_rows
    row_sq, center = matrix.row_sq, matrix.center.to(data.device, data.dtype)
    q = queries - center

    def matmul():
        return (queries @ data.T) @ data

    def matmul_chunks():
        return sum((queries @ data[s:s + chunk_size].T) @ data[s:s + chunk_size]
                   for s in range(0, len(data), chunk_size))

    def naive():
        weights = torch.softmax(-torch.cdist(queries, data).square() / (2 * sigma**2), dim=1)
        return weights @ data

    def lossfloor(chunk=chunk_size):
        stats = posterior_stats(q, rows, sigma, shift=shift, chunk_size=chunk, row_sq=row_sq)
        return stats.mean() + center

    return {"matmul": matmul, "matmul, chunks": matmul_chunks, "naive": naive, "lossfloor": lossfloor,
            "lossfloor, chunks of 8192": lambda: lossfloor(8192)}


def time_shape(n: int, dim: int, queries: int, repeats: int, chunk_size: int, device: str, seed: int) -> list:
    """Median seconds, GFLOP/s and ratio to matmul of each method at one shape."""
    gen = torch.Generator().manual_seed(seed)
    data = (0.5 * torch.randn(n, dim, generator=gen)).to(device)
    q = (data[:queries].cpu() + 0.3 * torch.randn(queries, dim, generator=gen)).to(device)
    sigma = 0.3 * dim**0.5 / 8  # a spread posterior: every weight is computed, none is skipped
    fns = methods(q, data, sigma, chunk_size)
    ref, out = fns["naive"]().double(), fns["lossfloor"]().double()
    max_err = (ref - out).abs().max().item()
    times = {name: [] for name in fns}
    for _ in range(repeats + 1):  # interleaved, so load from other processes hits every method alike
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    flops = 4.0 * queries * n * dim
    base = statistics.median(times["matmul"][1:])
    rows = []
    for name, ts in times.items():
        sec = statistics.median(ts[1:])  # the first round is a warm-up
        ratios = [m / t for m, t in zip(times["matmul"][1:], ts[1:], strict=True)]  # same repeat, interleaved
        rows.append({"n": n, "dim": dim, "queries": queries, "method": name, "seconds": sec,
                     "gflops": flops / sec / 1e9, "ratio_to_matmul": base / sec,
                     "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
                     "ratio_max": max(ratios), "seconds_all": ts[1:]})
    rows[3]["max_abs_diff_vs_naive"] = max_err
    return rows


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def markdown(rows: list, meta: dict) -> str:
    """The table of results as markdown."""
    lines = [f"Device {meta['device']}, {meta['threads']} threads, torch {meta['torch']}, dtype float32, "
             f"M = {rows[0]['queries']} queries, chunks of {meta['chunk_size']} rows, "
             f"median of {meta['repeats']} repeats, "
             f"load average before the run {meta['load_before']}.", "",
             "| N | D | method | seconds | GFLOP/s | ratio to matmul (median of repeats, min..max) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['dim']} | {r['method']} | {r['seconds']:.3f} | {r['gflops']:.1f} | "
                     f"{r['ratio_median']:.2f} ({r['ratio_min']:.2f}..{r['ratio_max']:.2f}) |")
    if "load_after" in meta:
        lines += ["", f"load average after the run {meta['load_after']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=512, help="M, queries per batch")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shapes", default=",".join(f"{n}x{d}" for n, d in SHAPES), help="NxD,NxD")
    parser.add_argument("--out", type=Path, help="folder for kernel.json and kernel.md")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # the logits need full float32
    meta = {"device": args.device if args.device != "cpu" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__, "repeats": args.repeats,
            "chunk_size": args.chunk_size,
            "load_before": round(os.getloadavg()[0], 2), "command": "python benchmarks/kernel.py "
            + " ".join(argv if argv is not None else sys.argv[1:])}
    rows = []
    for shape in args.shapes.split(","):
        n, dim = (int(v) for v in shape.lower().split("x"))
        rows += time_shape(n, dim, args.queries, args.repeats, args.chunk_size, args.device, args.seed)
        print(markdown(rows, meta), flush=True)
    meta["load_after"] = round(os.getloadavg()[0], 2)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "kernel.json", json.dumps({"meta": meta, "rows": rows}, indent=1))
        atomic_write_text(args.out / "kernel.md", markdown(rows, meta))


if __name__ == "__main__":
    main()
