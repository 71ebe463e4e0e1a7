"""Scaling-law fits of a user's own training runs (`lossfloor fit RUNS.csv`): the CSV schema, its checks,
and the fits of `lossfloor.evaluate.scaling` on the compute frontier and per run.

The CSV (one row per evaluated checkpoint; a header row; other columns are ignored):

==================  ==============================================================================
``run``             run id (any text): the bootstrap resamples whole runs
``loss``            the loss at that checkpoint, per dimension, under the objective J* is taken for
``compute``         training compute (FLOPs, or any positive unit) -- or both of
``steps``,          training steps and FLOPs per step; compute = steps x flops_per_step
``flops_per_step``
``parameters``      optional: the model's parameter count (reported per run)
``sigma``           optional: empty for the objective's total loss; a noise level for the x0 loss at
                    that level (fitted per level against J*(sigma) from the curve)
``size``            optional: the model size (any text) when several runs (seeds) share it; then the
                    frontier is taken on each size's mean curve and the bootstrap resamples runs within
                    sizes, re-choosing the frontier (`lossfloor.evaluate.frontier`); the runs of a size
                    need the same checkpoints
==================  ==============================================================================

Any of these names can be mapped to another header (`Columns`), e.g. the scaling study's points.csv with
run=width, compute=compute_flops, loss=train_loss.  Every problem -- a missing column, a value that is not
a positive finite number, a duplicated (run, compute, sigma) row, a single run -- is an `InputError` naming
the file and the line.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lossfloor.core.errors import InputError
from lossfloor.core.stats import Estimate
from lossfloor.evaluate import frontier, scaling

TOTAL = "total"


@dataclass(frozen=True)
class Columns:
    """The CSV headers of each field (`lossfloor fit --column field=HEADER`)."""

    run: str = "run"
    loss: str = "loss"
    compute: str = "compute"
    steps: str = "steps"
    flops_per_step: str = "flops_per_step"
    parameters: str = "parameters"
    sigma: str = "sigma"
    size: str = "size"

    @classmethod
    def parse(cls, pairs) -> Columns:
        """From 'field=HEADER' strings."""
        mapping = {}
        for pair in pairs:
            field_name, sep, header = pair.partition("=")
            if not sep or not header.strip() or field_name.strip() not in cls.__dataclass_fields__:
                raise InputError(f"--column {pair!r}: expected FIELD=HEADER with FIELD one of "
                                 f"{', '.join(cls.__dataclass_fields__)}")
            mapping[field_name.strip()] = header.strip()
        return cls(**mapping)


@dataclass(frozen=True)
class Runs:
    """The checked rows of a runs CSV (sigma nan on total-loss rows)."""

    path: str
    run: np.ndarray  # str labels
    compute: np.ndarray
    loss: np.ndarray
    sigma: np.ndarray
    parameters: np.ndarray  # nan where not given
    line: np.ndarray  # the CSV line of each row (messages)
    size: np.ndarray | None = None  # str labels when the CSV has a size column

    @property
    def sized(self) -> bool:
        return self.size is not None

    def select(self, sigma: float | None) -> np.ndarray:
        """Indices of the total-loss rows (None) or of one noise level's rows."""
        if sigma is None:
            return np.nonzero(np.isnan(self.sigma))[0]
        return np.nonzero(self.sigma == sigma)[0]

    @property
    def levels(self) -> list[float]:
        return sorted(set(self.sigma[~np.isnan(self.sigma)].tolist()))


def _number(path, line: int, name: str, text: str, positive: bool = True, optional: bool = False) -> float:
    text = (text or "").strip()
    if not text:
        if optional:
            return math.nan
        raise InputError(f"{path} line {line}: no value in column {name!r}")
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{path} line {line}: {name} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"{path} line {line}: {name} is {text}; every value must be finite")
    if positive and value <= 0:
        raise InputError(f"{path} line {line}: {name} must be positive, got {text}")
    return value


def read_runs(path, columns: Columns = Columns()) -> Runs:
    """Read and check a runs CSV (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a UTF-8 text (CSV) file") from None
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    if not header:
        raise InputError(f"{path}: empty file; expected a CSV with a header row")
    c = columns
    by_product = c.compute not in header and {c.steps, c.flops_per_step} <= set(header)
    need = [c.run, c.loss] + ([] if by_product else [c.compute])
    missing = [name for name in need if name not in header]
    if missing:
        hint = f" (or {c.steps} and {c.flops_per_step})" if c.compute in missing else ""
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}{hint}; found {', '.join(header)}")
    rows, seen = [], {}
    for line, row in enumerate(reader, start=2):
        if None in row or any(v is None for v in row.values()):
            raise InputError(f"{path} line {line}: {len(header)} columns expected")
        run = (row[c.run] or "").strip()
        if not run:
            raise InputError(f"{path} line {line}: empty run id in column {c.run!r}")
        if by_product:
            compute = (_number(path, line, c.steps, row[c.steps])
                       * _number(path, line, c.flops_per_step, row[c.flops_per_step]))
        else:
            compute = _number(path, line, c.compute, row[c.compute])
        loss = _number(path, line, c.loss, row[c.loss])
        sigma = _number(path, line, c.sigma, row[c.sigma], optional=True) if c.sigma in header else math.nan
        params = (_number(path, line, c.parameters, row[c.parameters], optional=True)
                  if c.parameters in header else math.nan)
        size = (row[c.size] or "").strip() if c.size in header else None
        if size == "":
            raise InputError(f"{path} line {line}: empty model size in column {c.size!r}")
        if size is not None:  # runs are seeds of a size: "size/run" keeps them apart across sizes
            run = f"{size}/{run}"
        key = (run, compute, None if math.isnan(sigma) else sigma)
        if key in seen:
            where = "" if key[2] is None else f" and sigma {sigma:g}"
            raise InputError(f"{path} lines {seen[key]} and {line}: run {run!r} has two rows at compute "
                             f"{compute:g}{where} (duplicate rows)")
        seen[key] = line
        rows.append((run, compute, loss, sigma, params, line, size))
    if not rows:
        raise InputError(f"{path}: no data rows under the header")
    runs = Runs(str(path), np.array([r[0] for r in rows]), *(np.array([r[k] for r in rows], dtype=float)
                                                             for k in range(1, 5)),
                np.array([r[5] for r in rows]), np.array([r[6] for r in rows]) if c.size in header else None)
    labels = sorted(set(runs.run.tolist()))
    if len(labels) < 2:
        raise InputError(f"{path}: one run ({labels[0]!r}); the intervals resample whole runs, so a fit "
                         "needs at least 2 runs")
    return runs


@dataclass(frozen=True)
class FitOptions:
    """The bootstrap: resamples and seed (fits with one seed share their resamples)."""

    n_boot: int = 1000
    seed: int = 0


def _sized_fits_of(runs: Runs, idx: np.ndarray, floor: Estimate, opts: FitOptions, name: str) -> dict:
    """Fits on the frontier of each size's mean curve, seeds resampled within sizes (`evaluate.frontier`),
    and point fits of each size's mean curve."""
    try:
        curves = frontier.Curves.from_points(runs.compute[idx], runs.loss[idx], runs.size[idx], runs.run[idx])
    except InputError as err:
        raise InputError(f"{runs.path}: the {name} rows: {err}") from None
    study = frontier.frontier_study(curves, floor.value, n_boot=opts.n_boot, seed=opts.seed,
                                    floor_stderr=floor.stderr)
    if len(study.points) < 3:
        raise InputError(f"{runs.path}: the compute frontier of the {name} rows' mean curves has "
                         f"{len(study.points)} point(s); a fit needs at least 3")
    compute, mean, size = curves.mean()
    points = [(str(curves.sizes[size[i]]), float(compute[i]), float(mean[i])) for i in study.points]
    on = {(s, c) for s, c, _ in points}
    per_size = {}
    for h, label in enumerate(curves.sizes):
        m = np.nonzero(size == h)[0]
        if len(m) >= 3 and np.ptp(compute[m]) > 0:
            per_size[str(label)] = {f: frontier.fit_point(f, compute[m], mean[m], floor.value)
                                    for f in ("plain", "corrected")}
    return {"rows": idx.tolist(), "frontier": [int(i) for i in idx if (runs.size[i], runs.compute[i]) in on],
            "frontier_points": [{"size": s, "compute": c, "mean_loss": v} for s, c, v in points],
            "floor": floor.value, "floor_stderr": floor.stderr,
            "frontier_below_floor": int(sum(v <= floor.value for _, _, v in points)),
            "fits": study.summary(), "per_size": per_size, "_fits": study.laws()}


def _fits_of(runs: Runs, idx: np.ndarray, floor: Estimate, opts: FitOptions, name: str) -> dict:
    """Frontier fits (whole runs resampled) and per-run fits (points resampled) of rows `idx`; with a size
    column, `_sized_fits_of`."""
    compute, loss, labels = runs.compute[idx], runs.loss[idx], runs.run[idx]
    if len(set(labels.tolist())) < 2:
        raise InputError(f"{runs.path}: the {name} rows come from one run ({labels[0]!r}); the intervals "
                         "resample whole runs, so a fit needs at least 2 runs")
    if runs.sized:
        return _sized_fits_of(runs, idx, floor, opts, name)
    order = {label: k for k, label in enumerate(dict.fromkeys(runs.run.tolist()))}  # runs in file order
    codes = np.array([order[label] for label in labels.tolist()])
    front, fits = scaling.frontier_fits(compute, loss, floor.value, codes, opts.n_boot, opts.seed,
                                        floor_stderr=floor.stderr)
    if not fits:
        raise InputError(f"{runs.path}: the compute frontier of the {name} rows has {len(front)} point(s); "
                         "a fit needs at least 3 (more checkpoints per run, or more runs)")
    per_run = {}
    for label in sorted(set(labels.tolist())):
        sel = np.nonzero(labels == label)[0]
        if len(sel) >= 3 and np.ptp(compute[sel]) > 0:
            per_run[label] = scaling.fit_summary(scaling.fit_all(
                compute[sel], loss[sel], floor.value, n_boot=opts.n_boot, seed=opts.seed,
                floor_stderr=floor.stderr))
    below = int(np.sum(loss[front] <= floor.value))
    return {"rows": idx.tolist(), "frontier": idx[front].tolist(), "floor": floor.value,
            "floor_stderr": floor.stderr, "frontier_below_floor": below, "fits": scaling.fit_summary(fits),
            "per_run": per_run, "_fits": fits}


def fit_runs(runs: Runs, total_floor: Estimate | None, level_floor=None,
             opts: FitOptions = FitOptions()) -> dict:
    """Plain, corrected and free fits of the total-loss rows (against `total_floor`) and of each noise
    level's rows (against `level_floor(sigma) -> Estimate`), on the compute frontier with bootstrap
    intervals over whole runs, and per run.  The returned report is JSON-ready except the '_fits' entries
    (the `PowerLawFit` objects, for figures)."""
    report = {"source": runs.path, "options": asdict(opts), "runs": _run_table(runs)}
    totals = runs.select(None)
    if len(totals):
        if total_floor is None:
            raise InputError("the corrected fit needs the floor: give --floor VALUE or --curve J.json "
                             "--objective O")
        report[TOTAL] = _fits_of(runs, totals, total_floor, opts, "total-loss")
    levels = runs.levels
    if levels and level_floor is None:
        raise InputError(f"{runs.path}: rows with a sigma are per-level losses; their floor J*(sigma) comes "
                         "from --curve J.json")
    report["per_sigma"] = [{"sigma": s, **_fits_of(runs, runs.select(s), level_floor(s), opts,
                                                   f"sigma={s:g}")} for s in levels]
    return report


def _run_table(runs: Runs) -> list[dict]:
    out = []
    for label in sorted(set(runs.run.tolist())):
        sel = runs.run == label
        params = runs.parameters[sel]
        out.append({"run": label, "rows": int(sel.sum()),
                    "parameters": float(params[0]) if np.isfinite(params[0]) else None,
                    "compute": [float(runs.compute[sel].min()), float(runs.compute[sel].max())]})
    return out


def json_ready(obj):
    """The report without '_'-prefixed entries and with non-finite floats as None (strict JSON)."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def point_rows(runs: Runs, report: dict) -> list[dict]:
    """One CSV row per input row: its values, whether it is on its frontier, each frontier fit's J(F)."""
    parts = ([report[TOTAL]] if TOTAL in report else []) + report["per_sigma"]
    rows = []
    for part in parts:
        front = set(part["frontier"])
        for i in part["rows"]:
            row = {"run": runs.run[i], "sigma": "" if math.isnan(runs.sigma[i]) else f"{runs.sigma[i]:.6g}",
                   "compute": f"{runs.compute[i]:.6e}", "loss": f"{runs.loss[i]:.6g}",
                   "floor": f"{part['floor']:.6g}", "on_frontier": int(i in front)}
            for form, fit in part["_fits"].items():
                row[f"fit_{form}"] = f"{float(fit.predict(runs.compute[i])):.6g}"
            rows.append(row)
    return rows
