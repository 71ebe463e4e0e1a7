"""`lossfloor estimate`: settings, checks, resumable per-level estimation of J*(sigma), outputs and report."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lossfloor.app.common import (
    check_coverage,
    check_out_dir,
    parse_sigmas,
    resolve_device,
    sigma_data_note,
    with_sigma_data,
)
from lossfloor.app.warn import for_command
from lossfloor.core.errors import InputError
from lossfloor.core.files import atomic_write_text
from lossfloor.core.schema import read_json
from lossfloor.data.dataset import Dataset
from lossfloor.data.load import load_dataset
from lossfloor.data.rows import load_rows_dataset
from lossfloor.floor.config import DEFAULT_QUERIES, EstimatorConfig, LevelEstimate
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.floor.distributed import init_from_env, is_main_process, main_only, rank_device
from lossfloor.floor.estimator import Estimator, snap_to_done
from lossfloor.floor.totals import TotalLoss
from lossfloor.objective.objective import Objective, get_objective

ESTIMATE_FILES = ("optimal_loss.json", "optimal_loss.csv", "optimal_loss.png")
PARTIAL_FILE = "optimal_loss.partial.json"
RESUME_KEYS = ("estimator", "queries", "target_stderr", "total_stderr", "min_queries", "control_subset",
               "subset", "C", "form", "seed", "dtype", "class_conditional")


# -- estimate ---------------------------------------------------------------------------------

PRECONDITIONED_WEIGHTS = ("edm_weight", "soft_min_snr")  # weights that read sigma_data


@dataclass(frozen=True)
class EstimateSettings:
    """`lossfloor estimate`: data, objective, sigma grid, estimator and output options."""

    data: str = "digits"
    data_dir: str | None = None
    split: str = "train"
    n: int | None = None
    data_seed: int = 0
    flip: bool = False
    class_conditional: bool = False
    objective: str = "edm"
    sigma_data: float | None = None  # EDM's preconditioning for data of this std (default: the preset's 0.5)
    sigmas: tuple[float, ...] | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    num_sigmas: int | None = None
    estimator: str = "full"
    queries: int | None = None  # default min(N, DEFAULT_QUERIES)
    queries_per_point: float | None = None
    target_stderr: float | None = None
    min_queries: int | None = None  # with target_stderr: a small first round, then what the spread needs
    control_subset: int | None = None  # with min_queries: the control variate's subset size
    prune: bool = False  # exact pruning of far data points at small sigma (full estimator)
    total_stderr: float | None = None  # adaptive levels and queries until the total is this precise
    subset: int | None = None
    C: float | None = None
    form: str = "rb"
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    out_of_core: bool = False
    out: str = "out/estimate"
    resume: bool = False
    force: bool = False


@dataclass
class EstimateRun:
    """A checked estimate, ready to run: the data, the estimator and the levels already done."""

    settings: EstimateSettings
    grid: list[float]
    objective: Objective
    dataset: Dataset
    estimator: Estimator
    queries: int
    identity: dict
    done: dict
    out: Path
    main: bool  # rank 0 (or a single process): the one that writes --out

    def header(self) -> str:
        """One line: the data, the estimator, the queries and levels (and how many are done)."""
        data, s, est = self.estimator.data, self.settings, self.estimator
        variance = f"data variance {data.variance:.6g}"
        if est.classes:  # J* and J*/var are within the query's class: say so, and which variance
            variance = (f"class-conditional ({len(est.classes)} classes): within-class variance "
                        f"{est.data_variance:.6g} (overall {data.variance:.6g})")
        queries = (f"{self.queries} queries per level" if s.target_stderr is None else
                   f"queries per level as --target-stderr {s.target_stderr:g} needs (a first round of "
                   f"{s.min_queries or self.queries}; the counts used follow the table)")
        return (f"{s.data} ({s.split}): N = {data.n}, D = {data.dim}, {variance}; {s.estimator} estimator, "
                f"{queries}, {len(self.grid)} levels ({len(self.done)} already done)")


@dataclass
class EstimateResult:
    curve: OptimalLossCurve
    total: TotalLoss
    objective: Objective
    files: list[Path]
    class_conditional: bool = False

    def report(self) -> tuple[list[str], list[str]]:
        """(lines for stdout, warnings for stderr): the curve's table, the total and the critical sigma."""
        curve, total, name = self.curve, self.total, self.objective.name
        lines = [f"{'sigma':>10} {'J*':>12} {'stderr':>10} {'J*/var':>8}"]
        lines += [f"{s:10.4g} {v:12.6g} {e:10.2g} {v / curve.data_variance:8.4f}"
                  for s, v, e in zip(curve.sigma, curve.loss, curve.stderr, strict=True)]
        lines.append(f"total optimal loss of {name}: {total.value:.6g} ± {total.stderr:.2g} per dimension "
                     f"(Monte-Carlo {total.mc_stderr:.2g}, interpolation {total.interpolation_error:.2g}, "
                     f"below the grid {total.below_grid_error:.2g}; "
                     f"{total.extrapolated:.3g} of it from beyond the sigma grid)")
        uses_sigma_data = self.objective.target == "F" or self.objective.weight.kind in PRECONDITIONED_WEIGHTS
        note = sigma_data_note(self.objective, curve.data_variance) if uses_sigma_data else None
        lines += [note] if note else []
        coverage = curve.coverage(self.objective)
        warnings = [] if coverage.supported else [f"warning: {for_command(coverage.message, 'estimate')}"]
        used = curve.settings.get("queries_used") or []
        if used and min(used) != max(used):
            lines.append(f"queries used per level: {min(used):,}–{max(used):,} (optimal_loss.csv: per level)")
        within = "within-class " * self.class_conditional
        lines.append(f"critical sigma (J* > 1% of the {within}data variance, interpolated): "
                     f"{curve.critical()}")
        if curve.loss[-1] < 0.9 * curve.data_variance:
            lines.append(f"note: J*(sigma_max) is {curve.loss[-1] / curve.data_variance:.2f} of the data "
                         "variance; raise --sigma-max to reach the plateau")
        lines.append(f"wrote {', '.join(str(f) for f in self.files)}")
        lines.append(f"next: lossfloor diagnose --checkpoint RUN --curve {self.files[0]} (a model trained on "
                     f"this data against J*), or lossfloor train ... --schedule optimal-loss --curve "
                     f"{self.files[0]}")
        return lines, warnings


def default_queries(n: int, queries: int | None = None, per_point: float | None = None) -> int:
    """Queries per level: --queries, else --queries-per-point x N, else min(N, DEFAULT_QUERIES)."""
    if queries is not None and per_point is not None:
        raise InputError("give either --queries or --queries-per-point, not both")
    if queries is not None:
        return queries
    if per_point is not None:
        if not per_point > 0:
            raise InputError(f"--queries-per-point must be positive, got {per_point}")
        queries, most = math.ceil(per_point * n), EstimatorConfig.max_queries
        if queries > most:
            raise InputError(f"--queries-per-point {per_point:g}: {queries:,} queries per level for "
                             f"N = {n:,}; at most {most:,}")
        return queries
    return min(n, DEFAULT_QUERIES)


def _check_estimate_options(s: EstimateSettings) -> None:
    if s.queries_per_point is not None and not s.queries_per_point > 0:
        raise InputError(f"--queries-per-point must be positive, got {s.queries_per_point}")
    if s.queries is not None and s.queries_per_point is not None:
        raise InputError("give either --queries or --queries-per-point, not both")
    if s.estimator == "full" and s.subset is not None:
        raise InputError("--subset applies to the subset estimators (cdol, dol, snis), not full")
    if s.min_queries is not None and (s.estimator != "full" or s.target_stderr is None):
        raise InputError("--min-queries applies with --target-stderr and the full estimator")
    if s.prune and s.estimator != "full":
        raise InputError(f"--prune applies to the full estimator, not {s.estimator}")
    if s.control_subset is not None and (s.estimator != "full" or s.target_stderr is None
                                         or s.min_queries is None):
        raise InputError("--control-subset needs the full estimator with --target-stderr and --min-queries")
    if s.estimator != "cdol" and s.C is not None:
        raise InputError("--C applies to --estimator cdol only")
    if s.out_of_core and (s.data_dir, s.split, s.flip, s.n, s.class_conditional) != (None, "train", False,
                                                                                       None, False):
        raise InputError("--out-of-core reads a .npy file or a folder of .npy shards as given: no "
                         "--data-dir, --split test, --flip, --n or --class-conditional")


def prepare_estimate(s: EstimateSettings) -> EstimateRun:
    """Check everything and load the data; nothing is written (under torchrun rank 0 checks --out)."""

    grid = parse_sigmas(s.sigmas, s.sigma_min, s.sigma_max, s.num_sigmas)
    obj = with_sigma_data(get_objective(s.objective), s.sigma_data)
    check_coverage(obj, grid)
    _check_estimate_options(s)
    if s.total_stderr is not None and len(grid) < 2:
        raise InputError(f"--total-stderr refines a grid of at least 2 sigma levels, got {len(grid)} "
                         "(give more --sigmas or --sigma-min/--sigma-max)")
    if s.total_stderr is not None and not (math.isfinite(s.total_stderr) and s.total_stderr > 0):
        raise InputError(f"--total-stderr must be a positive finite number, got {s.total_stderr}")
    resolve_device(s.device)
    out = Path(s.out)
    if s.resume and s.force:
        raise InputError("give either --resume or --force, not both")
    # Under torchrun every rank streams its share of the rows; rank 0 alone checks and writes --out.
    init_from_env(s.device)
    dev = torch.device(rank_device(s.device))
    main_only(check_out_dir, out, (*ESTIMATE_FILES, PARTIAL_FILE), resume=s.resume, force=s.force)
    if s.out_of_core:
        dataset = load_rows_dataset(s.data)
    else:
        dataset = load_dataset(s.data, data_dir=s.data_dir, split=s.split, flip=s.flip, n=s.n,
                               seed=s.data_seed)
    if s.class_conditional and dataset.labels is None:
        raise InputError(f"--class-conditional: {s.data} has no labels")
    n = len(dataset)
    if n < 2:
        raise InputError(f"{s.data}: need at least 2 data points, got {n}")
    if s.class_conditional:
        classes, counts = torch.unique(torch.as_tensor(dataset.labels), return_counts=True)
        if (counts < 2).any():
            lonely = int(classes[counts < 2][0])
            raise InputError(f"--class-conditional: class {lonely} of {s.data} has a single point; every "
                             "class needs at least 2")
    if s.control_subset is not None and s.control_subset > n:
        raise InputError(f"--control-subset {s.control_subset}: larger than the data (N = {n}); at most {n}")
    queries = default_queries(n, s.queries, s.queries_per_point)
    config = EstimatorConfig(estimator=s.estimator, queries=queries, subset=s.subset, C=s.C, form=s.form,
                             target_stderr=s.target_stderr, min_queries=s.min_queries,
                             control_subset=s.control_subset, prune=s.prune)
    est = Estimator(dataset.rows(), config, labels=dataset.labels if s.class_conditional else None,
                    device=dev, dtype=getattr(torch, s.dtype), std=dataset.std_rows())
    identity = {"estimator": s.estimator, "queries": queries, "target_stderr": s.target_stderr,
                "total_stderr": s.total_stderr, "min_queries": s.min_queries,
                "control_subset": s.control_subset,
                "subset": s.subset, "C": s.C, "form": s.form, "seed": s.seed, "dtype": s.dtype,
                "class_conditional": s.class_conditional, "fingerprint": dataset.fingerprint}
    done = main_only(finished_levels, out, identity) if s.resume else {}
    grid = snap_to_done(grid, done)  # the saved levels, even where this numpy's grid differs in the last bits
    if s.total_stderr is None:  # --total-stderr adds levels of its own: keep them all
        done = {sigma: done[sigma] for sigma in grid if sigma in done}
    return EstimateRun(s, grid, obj, dataset, est, queries, identity, done, out, is_main_process())


def finished_levels(out, identity: dict) -> dict:
    """Levels saved by an earlier run in `out` (partial or complete) with the same settings."""
    for name in (PARTIAL_FILE, ESTIMATE_FILES[0]):
        path = Path(out) / name
        if not path.exists():
            continue
        try:
            doc = read_json(path, "lossfloor estimate")
            saved = {k: doc["settings"].get(k) for k in RESUME_KEYS} | {"fingerprint": doc["fingerprint"]}
            control = doc["settings"].get("control_queries_used") or [0] * len(doc["sigma"])
            levels = list(zip(doc["sigma"], doc["loss"], doc["stderr"], doc["settings"]["queries_used"],
                              control, strict=True))
        except InputError:
            raise
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise InputError(f"--resume: {path} is not a lossfloor estimate ({err})") from None
        changed = [k for k in identity if saved.get(k) != identity[k]]
        if changed:
            both = ", ".join(f"{k} {saved.get(k)!r} (now {identity[k]!r})" for k in changed
                             if k != "fingerprint") + ("; other data" if "fingerprint" in changed else "")
            raise InputError(f"--resume: {path} was made with different settings ({both.lstrip('; ')}); "
                             "use another --out or --force")
        return {s: LevelEstimate(s, v, e, q, c) for s, v, e, q, c in levels}
    return {}


def curve_csv(curve: OptimalLossCurve) -> str:
    """One row per sigma level: sigma, J*, stderr, J*/variance, queries."""
    rows = ["sigma,loss,stderr,loss_over_variance,queries"]
    for s, v, e, q in zip(curve.sigma, curve.loss, curve.stderr, curve.settings["queries_used"], strict=True):
        rows.append(f"{s:.17g},{v:.17g},{e:.17g},{v / curve.data_variance:.17g},{q}")
    return "\n".join(rows) + "\n"


def run_estimate(run: EstimateRun, progress: bool = True) -> EstimateResult | None:
    """Estimate the missing levels (saving each), then write JSON, CSV and PNG; None on ranks other than 0."""
    from lossfloor.plots.figures import plot_curve

    s, est, out, done = run.settings, run.estimator, run.out, dict(run.done)

    def save_partial(level):
        done[level.sigma] = level
        levels = sorted(done.values(), key=lambda e: e.sigma)
        partial = OptimalLossCurve([e.sigma for e in levels], [e.loss for e in levels],
                                   [e.stderr for e in levels], est.data.variance, est.data.n, est.data.dim,
                                   settings={**run.identity, "queries_used": [e.queries for e in levels],
                                             "control_queries_used": [e.control_queries for e in levels]},
                                   fingerprint=run.dataset.fingerprint)
        partial.save(out / PARTIAL_FILE)

    if run.main:
        out.mkdir(parents=True, exist_ok=True)
    if s.total_stderr is not None:
        curve = est.curve_for_total(run.objective, s.total_stderr, run.grid, seed=s.seed, done=run.done,
                                    on_level=save_partial if run.main else None,
                                    progress=progress and run.main)
    else:
        curve = est.curve(run.grid, seed=s.seed, done=run.done, on_level=save_partial if run.main else None,
                          progress=progress and run.main)
    if not run.main:
        return None
    curve.fingerprint = run.dataset.fingerprint
    curve.settings["device"] = str(est.data.device)
    obj = run.objective
    total = curve.total(obj, warn=False)  # the report prints the coverage warning on stderr, once
    files = [out / name for name in ESTIMATE_FILES]
    title = (f"{s.data} ({s.split}, N = {curve.n}, D = {curve.dim}): {s.estimator} estimator, "
             f"objective {obj.name}")
    plot_curve(curve, obj, files[2], title=title)
    atomic_write_text(files[1], curve_csv(curve))
    curve.save(files[0], estimator=s.estimator, objective=obj.name, objective_spec=obj.to_dict(),
               total=total.value, total_stderr=total.stderr, total_extrapolated=total.extrapolated,
               total_mc_stderr=total.mc_stderr, total_interpolation_error=total.interpolation_error,
               total_below_grid_error=total.below_grid_error,
               data=run.dataset.describe(), scaling=run.dataset.scaling)
    (out / PARTIAL_FILE).unlink(missing_ok=True)
    return EstimateResult(curve, total, obj, files, s.class_conditional)
