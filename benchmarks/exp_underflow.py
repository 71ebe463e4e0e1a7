"""Why the kernel floors exp's arguments: torch's CPU exp where its float32 result underflows, in one process.

Times `torch.exp` on an (M, chunk) float32 tensor of arguments in [-10, 0] (normal results), in [-200, -100]
(results that underflow float32) and the latter clamped at `kernel.exp_floor` first (what the kernel does),
interleaved, median of repeats; prints the ratios to the first.

    python benchmarks/exp_underflow.py --out results/benchmarks
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from lossfloor.core.files import atomic_write_text
from lossfloor.floor.kernel import DEFAULT_CHUNK, exp_floor


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    shape = (args.queries, DEFAULT_CHUNK)
    normal = -10 * torch.rand(shape, generator=gen)
    under = -100 - 100 * torch.rand(shape, generator=gen)
    floor = exp_floor(torch.float32)
    buffer = torch.empty(shape)
    cases = {"arguments in [-10, 0]": lambda: torch.exp(normal, out=buffer),
             "arguments in [-200, -100]": lambda: torch.exp(under, out=buffer),
             "the same, clamped at the floor first": lambda: torch.clamp(under, min=floor, out=buffer).exp_()}
    times = {name: [] for name in cases}
    for _ in range(args.repeats + 1):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["arguments in [-10, 0]"][1:])
    rows = [{"case": name, "ms": 1e3 * statistics.median(ts[1:]), "ratio": statistics.median(ts[1:]) / base}
            for name, ts in times.items()]
    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 "
             f"{shape[0]} x {shape[1]}, "
             f"median of {args.repeats} interleaved repeats, load average {os.getloadavg()[0]:.2f}", "",
             "| exp of | ms | time / normal |", "|---|---|---|"]
    lines += [f"| {r['case']} | {r['ms']:.2f} | {r['ratio']:.1f} |" for r in rows]
    print("\n".join(lines))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/exp_underflow.py " + " ".join(argv if argv is not None else sys.argv[1:])
        doc = json.dumps({"command": command, "rows": rows}, indent=1)
        atomic_write_text(args.out / "exp_underflow.json", doc)
        atomic_write_text(args.out / "exp_underflow.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
