"""The trainer's CSV logs (log.csv, binned.csv): appended per checkpoint, truncated to it on resume."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from lossfloor.core.errors import InputError
from lossfloor.core.files import atomic_write_text

LOG_FILES = ("log.csv", "binned.csv")  # CSV logs: a header, then rows whose first column is the step


def append_csv(path: Path, rows: list[dict]) -> None:
    """Append rows (after a header if the file is new or empty), every line ending in LF."""
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _log_step(line: str) -> float:
    """The step of a log row (its first column); inf for a damaged row, so that it is dropped."""
    try:
        return int(line.split(",", 1)[0])
    except ValueError:
        return math.inf


def truncate_csv(path: Path, step: int) -> None:
    """Keep the header and the complete rows with step <= `step`, with LF line ends; a partly written last
    line (a killed run) goes too.  The file is replaced atomically, and only if this changes it."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        text = f.read()
    lines = [line for line in text.splitlines(keepends=True) if line.endswith("\n")]  # whole lines only
    if not lines:  # not even a whole header: written again by the next append_csv
        path.unlink()
        return
    if not lines[0].startswith("step,"):
        raise InputError(f"{path}: not a lossfloor training log (no 'step,...' header); move it away or "
                         "start over with --force")
    kept = lines[:1] + [line for line in lines[1:] if _log_step(line) <= step]
    new = "".join(line.rstrip("\r\n") + "\n" for line in kept)
    if new != text:
        atomic_write_text(path, new)
