"""What every study shares: the floor cache, train-and-evaluate cells with per-cell resume, reports.

A study module (``studies/<name>.py``) is a preset dataclass, a ``run_<name>_study`` that lists its
cells and a ``write_<name>_report``.  The helpers here do the rest:

Floor (J* of the training set)
    ``cached_floor(path, train, sigmas, config, seed=...)`` estimates J*(sigma) once and reuses the file
    only while the data fingerprint, the sigma grid, every `EstimatorConfig` field and the seed match
    (anything else is recomputed, never silently reused).  ``extra=`` adds derived numbers to the file;
    ``load_floor(path)`` reads it back as ``(curve, dict)``.

Cells (one training run and its evaluation; the unit of resume)
    ``run_cells(cells, path_of, compute, matches=None, progress=..., desc=...)`` computes every cell whose
    JSON file is missing (or whose stored result fails ``matches``) and writes it atomically; finished
    cells are skipped, so an interrupted study resumes where it stopped.  ``train_run(train, objective,
    model, config, run_dir)`` trains (resuming from the run's checkpoint) inside a cell; ``seeded(seed)``
    fixes torch's global RNG for code that draws from it.  ``load_cells(pattern_root, glob)`` reads the
    finished cells back.  ``check_choice(kind, value, allowed)`` rejects unknown names (ValueError: the
    CLI turns it into one line on stderr and exit code 2) before anything is written.

Report
    ``mean_se(values)`` (mean and standard error over seeds), ``paired_difference(a, b)`` (mean ± SE of
    per-seed differences: the interval to quote for a comparison), ``fmt_pm(value, se)``,
    ``markdown_table(head, rows)``, ``csv_text(rows, fields)``, ``text_table(head, rows)`` (for the
    terminal) and ``write_json(path, obj)``; every output is written atomically.

Images
    ``cached_classifier(path, train, test, steps)``: the Fréchet feature classifier, trained once per
    dataset and output folder.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from lossfloor.core.errors import InputError
from lossfloor.core.files import atomic_write_bytes, atomic_write_json
from lossfloor.core.schema import (
    check_weights,
    mapping,
    number,
    read_json,
    safe_torch_load,
    tensor,
    validate,
)
from lossfloor.core.stats import Estimate
from lossfloor.evaluate.metrics import FeatureClassifier, classifier_accuracy, train_classifier
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.floor.estimator import Estimator
from lossfloor.train.trainer import train as run_training

# -- the floor -------------------------------------------------------------------------------------


def load_floor(path) -> tuple[OptimalLossCurve, dict]:
    """A cached floor file as (curve, everything stored with it); reads the older {"curve": ...} layout."""
    stored = read_json(path, "floor file")
    if not isinstance(stored, dict):
        raise InputError(f"{path}: not a floor file (a JSON object)")
    curve = OptimalLossCurve.from_dict(stored.get("curve", stored))
    curve.fingerprint = curve.fingerprint or stored.get("fingerprint", "")
    return curve, stored


PERFORMANCE_SETTINGS = ("batch_size", "chunk_size")  # EstimatorConfig fields that set speed only


def floor_matches(curve: OptimalLossCurve, train, sigmas, config, seed: int) -> bool:
    """True when a cached curve was estimated on this data, sigma grid, estimator configuration and seed.

    A setting missing from an older file counts as that field's default (the behaviour it was run with);
    the kernel's batch and chunk sizes (speed, not the estimate: PERFORMANCE_SETTINGS) are not compared, so
    a floor cached before a default chunk size changed is still reused.
    """
    settings = curve.settings or {}
    defaults = {f.name: f.default for f in fields(config)}
    same_settings = all(settings.get(k, defaults[k]) == v for k, v in asdict(config).items()
                        if k not in PERFORMANCE_SETTINGS)
    same_grid = len(curve.sigma) == len(sigmas) and np.allclose(curve.sigma, sigmas, rtol=1e-9)
    same_data = curve.fingerprint == train.fingerprint
    return same_data and same_grid and same_settings and settings.get("seed") == seed


def cached_floor(path, train, sigmas, config, *, seed: int = 0, progress: bool = False,
                 extra: Callable[[OptimalLossCurve], dict] | None = None) -> OptimalLossCurve:
    """J*(sigma) of `train` on `sigmas` with `config` (an EstimatorConfig), reused from `path` only if
    `floor_matches`; otherwise estimated and saved with `extra(curve)` added to the file."""

    path = Path(path)
    sigmas = np.asarray(sigmas, dtype=float)
    if path.exists():
        try:
            curve, _ = load_floor(path)
        except (ValueError, KeyError):  # InputError included
            curve = None  # unreadable: a cache, so recompute
        if curve is not None and floor_matches(curve, train, sigmas, config, seed):
            return curve
    curve = Estimator(train.rows(), config).curve(sigmas, seed=seed, progress=progress)
    curve.fingerprint = train.fingerprint
    path.parent.mkdir(parents=True, exist_ok=True)
    curve.save(path, data=train.describe(), **(extra(curve) if extra is not None else {}))
    return curve


# -- cells -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block with torch's global RNG seeded, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


SEED_MAX = 2**32 - 1  # study seeds also seed numpy, whose seeds are 32-bit


def check_seeds(seeds, option: str = "--seeds") -> None:
    """Every seed an integer in [0, SEED_MAX]; InputError naming the option and the range otherwise."""
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= SEED_MAX:
            raise InputError(f"{option}: {s!r} is not a seed; expected integers from 0 to {SEED_MAX}")


def check_choice(kind: str, value, allowed: Iterable) -> None:
    """ValueError naming the allowed values unless `value` is one of them."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise InputError(f"unknown {kind} {value!r}; choose from {', '.join(map(str, allowed))}")


def json_plain(obj):
    """`obj` as it reads back from JSON (tuples become lists): the form to compare a cell's key in."""
    return json.loads(json.dumps(obj))


def run_cells(cells: Sequence, path_of: Callable[[object], Path], compute: Callable[[object], dict], *,
              matches: Callable[[dict], bool] | None = None, progress: bool = True,
              desc: str = "study", name_of: Callable[[object], str] = str) -> list[dict]:
    """Every cell's result: read from its JSON file when finished (and `matches` it), else computed by
    `compute(cell)` and written atomically at once, so an interrupted study resumes per cell."""
    from tqdm.auto import tqdm

    results = []
    with tqdm(total=len(cells), disable=not progress, desc=desc, unit="cell") as bar:
        for cell in cells:
            path = Path(path_of(cell))
            result = _read_cell(path) if path.exists() else None
            if result is None or (matches is not None and not matches(result)):
                bar.set_postfix(cell=name_of(cell))
                result = compute(cell)
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(path, result, indent=None)
            results.append(result)
            bar.update(1)
    return results


def _read_cell(path: Path) -> dict | None:
    """A finished cell's result, or None (recompute it) when the file is damaged: named on stderr."""
    try:
        result = read_json(path, "study cell")
    except InputError as err:
        warnings.warn(f"{err}; recomputing this cell", stacklevel=3)
        return None
    if not isinstance(result, dict):
        warnings.warn(f"{path}: not a study cell (a JSON object); recomputing this cell", stacklevel=3)
        return None
    return result


def train_run(train, objective, model, config, run_dir, *, data_info: dict | None = None,
              progress: bool = False):
    """Train one cell's model in `run_dir`, resuming from its checkpoint; returns the Trainer."""

    return run_training(train.x, objective, model, config, out=run_dir, resume=True, progress=progress,
                        data_info=train.describe() if data_info is None else data_info)


def load_cells(root, pattern: str) -> list[dict]:
    """Every finished cell result matching `pattern` under `root`, in file-name order."""
    return [read_json(p, "study cell") for p in sorted(Path(root).glob(pattern))]


# -- report ----------------------------------------------------------------------------------------


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error of the mean over seeds (nan SE for a single seed): `Estimate.of` as a pair."""
    est = Estimate.of(values)
    return est.value, est.stderr


def paired_difference(a: dict, b: dict) -> tuple[float, float, int]:
    """Mean ± SE of a[seed] - b[seed] over the seeds both have, and how many: a paired comparison."""
    seeds = sorted(set(a) & set(b))
    mean, se = mean_se([a[s] - b[s] for s in seeds]) if seeds else (math.nan, math.nan)
    return mean, se, len(seeds)


def fmt_pm(value: float, se: float = math.nan) -> str:
    """'value ± se' with 3 decimals (1 from 100 up); the value alone when the SE is not finite."""
    digits = 3 if abs(value) < 100 else 1
    return f"{value:.{digits}f} ± {se:.{digits}f}" if math.isfinite(se) else f"{value:.{digits}f}"


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]], title: str = "") -> str:
    """A markdown table (with an optional ### title) as text."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def text_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A plain, column-aligned table for the terminal."""
    rows = [list(map(str, r)) for r in rows]
    widths = [max([len(str(h))] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def csv_text(rows: Iterable[dict], fields: Sequence[str]) -> str:
    """CSV text (header + one line per dict) for `fields`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_json(path, obj, indent: int | None = 1) -> None:
    """Strict JSON (NaN as null), written atomically."""
    atomic_write_json(path, obj, indent)


# -- images: the classifier behind the Fréchet distance ----------------------------------------------


def cached_classifier(path, train, test, steps: int):
    """(classifier, test accuracy): trained once on labelled images, then reloaded from `path`."""

    path = Path(path)
    if path.exists():  # read like every file lossfloor loads: weights_only, then checked field by field
        state = safe_torch_load(path, "classifier cache")
        where = f"{path} (a classifier cache; delete it to retrain)"
        fields = {"net": mapping(values=tensor(finite=True)), "classes": number(2, integer=True),
                  "accuracy": number(0, 1)}
        validate(state, mapping(fields, name="a classifier cache (a dict)"), where)
        net = FeatureClassifier(train.shape, int(state["classes"]))
        check_weights(state["net"], net.state_dict(), where, "net")
        net.load_state_dict(state["net"])
        return net.eval().requires_grad_(False), float(state["accuracy"])
    net = train_classifier(train.x, train.labels, steps=steps, seed=0)
    acc = classifier_accuracy(net, test.x, test.labels)
    buf = io.BytesIO()
    torch.save({"net": net.state_dict(), "classes": net.classes, "accuracy": acc}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return net, acc
