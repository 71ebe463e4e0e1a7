"""Wall time of two CLI commands with `--threads 1` and `--threads 2` while other work keeps the cores busy.

torch starts one thread per core; when the cores are already busy those threads wait on each other.  This
runs each command alternately with 1 and 2 threads, `--repeats` times, while `--busy` background processes
spin on the CPU (a stand-in for the other jobs of a shared machine), and writes threads.md and threads.json.

    python benchmarks/threads.py --out results/benchmarks
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "estimate digits": ["estimate", "--data", "digits", "--force", "--no-progress", "--out", "{tmp}/e"],
    "train 30 UNet steps": ["train", "--data", "digits", "--model", "unet", "--width", "16", "--steps", "30",
                            "--batch-size", "64", "--force", "--no-progress", "--out", "{tmp}/t"],
}


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 1103515245 + 12345) % 2147483648


def _time(args: list[str], threads: int, tmp: str) -> float:
    cmd = [sys.executable, "-m", "lossfloor", "--threads", str(threads), *[a.format(tmp=tmp) for a in args]]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--busy", type=int, default=2, help="background processes spinning on the CPU")
    parser.add_argument("--out", default="results/benchmarks")
    args = parser.parse_args(argv)
    stop = mp.Event()
    spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.busy)]
    for p in spinners:
        p.start()
    rows = {name: {1: [], 2: []} for name in COMMANDS}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.repeats):
                for name, cmd in COMMANDS.items():
                    for threads in (1, 2):
                        rows[name][threads].append(_time(cmd, threads, tmp))
    finally:
        stop.set()
        for p in spinners:
            p.join()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"cpus": os.cpu_count(), "busy_processes": args.busy, "repeats": args.repeats,
            "load_after": os.getloadavg()[0]}
    (out / "threads.json").write_text(json.dumps({"meta": meta, "seconds": rows}, indent=1))
    lines = [f"# --threads 1 vs 2 with {args.busy} busy background processes on {os.cpu_count()} cores",
             "", "`python benchmarks/threads.py --out results/benchmarks` (each command alternately, "
             f"{args.repeats} repeats; seconds of wall time, each run)", "",
             "| command | --threads 1 | --threads 2 | ratio 2 / 1 (median) |", "|---|---|---|---|"]
    for name, by in rows.items():
        ratio = statistics.median(by[2]) / statistics.median(by[1])
        lines.append(f"| {name} | {', '.join(f'{t:.1f}' for t in by[1])} | "
                     f"{', '.join(f'{t:.1f}' for t in by[2])} | {ratio:.1f} |")
    (out / "threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
