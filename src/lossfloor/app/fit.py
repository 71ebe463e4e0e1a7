"""`lossfloor fit RUNS.csv`: scaling-law fits of a user's own runs with and without the floor J*
subtracted (`lossfloor.evaluate.runs`); a table on the terminal, JSON, CSV and PNG in --out."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lossfloor.app.common import check_out_dir
from lossfloor.core.errors import InputError
from lossfloor.core.files import atomic_write_text
from lossfloor.core.stats import Estimate
from lossfloor.evaluate import scaling
from lossfloor.evaluate.runs import (
    TOTAL,
    Columns,
    FitOptions,
    Runs,
    fit_runs,
    json_ready,
    point_rows,
    read_runs,
)
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.objective.objective import get_objective
from lossfloor.studies.common import csv_text, text_table

FIT_FILES = ("fit.json", "fit.csv", "fit.png")


@dataclass(frozen=True)
class FitSettings:
    """`lossfloor fit`: the runs CSV, where the floor comes from, the bootstrap and the output."""

    runs_csv: str = ""
    floor: float | None = None  # J* of the total loss, given
    floor_stderr: float = 0.0
    curve: str | None = None  # or from an optimal_loss.json ...
    objective: str | None = None  # ... and the objective the losses were measured under
    column: tuple[str, ...] = field(default_factory=tuple)  # FIELD=HEADER renames
    n_boot: int = 1000
    seed: int = 0
    out: str = "out/fit"
    force: bool = False


@dataclass
class FitRun:
    """Checked input: the rows, the floors and the output folder."""

    settings: FitSettings
    runs: Runs
    total_floor: Estimate | None
    curve: OptimalLossCurve | None
    out: Path

    def level_floor(self, sigma: float) -> Estimate:
        """J*(sigma) from the curve and its standard error (interpolated between levels)."""
        c = self.curve
        se = float(np.interp(math.log(sigma), np.log(c.sigma), c.stderr))
        return Estimate(float(c(sigma)), se)

    def floor_line(self) -> str:
        s = self.settings
        if self.total_floor is None:
            return f"floor:   J*(sigma) from {s.curve}"
        where = f"--floor {s.floor:g}" if s.curve is None else f"{s.curve} under {s.objective}"
        return f"floor:   J* = {self.total_floor.value:.6g} ± {self.total_floor.stderr:.2g} ({where})"


def prepare_fit(s: FitSettings) -> FitRun:
    """Check the options and read the CSV and the curve; nothing is written."""
    if s.floor is not None and s.curve is not None:
        raise InputError("give either --floor VALUE or --curve J.json --objective O, not both")
    if s.objective is not None and s.curve is None:
        raise InputError("--objective goes with --curve (the objective the losses were measured under)")
    out = Path(s.out)
    check_out_dir(out, FIT_FILES, force=s.force)
    runs = read_runs(s.runs_csv, Columns.parse(s.column))
    curve = None if s.curve is None else OptimalLossCurve.load(s.curve)
    total_floor = None
    if s.floor is not None:
        total_floor = Estimate(float(s.floor), float(s.floor_stderr))
    elif curve is not None and len(runs.select(None)):
        if s.objective is None:
            raise InputError("--curve needs --objective O for the floor of the total loss (the objective "
                             "the losses were measured under)")
        total = curve.total(get_objective(s.objective))
        total_floor = Estimate(total.value, total.stderr)
    return FitRun(s, runs, total_floor, curve, out)


@dataclass
class FitResult:
    report: dict
    files: list[Path]

    def lines(self) -> list[str]:
        """Per fitted part: the forms on the frontier (95% intervals over whole runs) and the paired
        difference of rho."""
        parts = ([("total loss", self.report[TOTAL])] if TOTAL in self.report else []) + [
            (f"x0 loss at sigma = {p['sigma']:.4g}", p) for p in self.report["per_sigma"]]
        lines = []
        for name, part in parts:
            if "frontier_points" in part:  # a size column: the frontier of each size's mean curve
                lines.append(f"{name}: {len(part['frontier_points'])} frontier points of the sizes' mean "
                             f"curves ({len(part['rows'])} rows; seeds resampled within sizes), floor "
                             f"{part['floor']:.6g}")
            else:
                lines.append(f"{name}: {len(part['frontier'])} frontier points of {len(part['rows'])}, floor "
                             f"{part['floor']:.6g}")
            lines.append(text_table(scaling.FORM_HEAD, scaling.form_rows(part["fits"])).rstrip())
            d = part["fits"].get("corrected_minus_plain", {}).get("rho")
            if d:
                lines.append(f"rho(corrected) - rho(plain) = {d['value']:+.4f}, paired 95% CI "
                             f"[{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]")
        return lines


def run_fit(run: FitRun) -> FitResult:
    """Fit, then write fit.json, fit.csv and fit.png."""
    s = run.settings
    report = fit_runs(run.runs, run.total_floor, run.level_floor if run.curve is not None else None,
                      FitOptions(n_boot=s.n_boot, seed=s.seed))
    report["floor_source"] = run.floor_line()
    rows = point_rows(run.runs, report)
    text = json.dumps(json_ready(report), indent=1, allow_nan=False)
    run.out.mkdir(parents=True, exist_ok=True)
    files = [run.out / name for name in FIT_FILES]
    from lossfloor.plots.fit import plot_fit

    part = report[TOTAL] if TOTAL in report else report["per_sigma"][0]
    plot_fit(run.runs, part, files[2], title=f"{Path(s.runs_csv).name}: {run.floor_line()}")
    atomic_write_text(files[1], csv_text(rows, list(rows[0])))
    atomic_write_text(files[0], text)
    return FitResult(report, files)
