"""The runs behind the command line: estimate, train, sample and diagnose.

Each run has a settings dataclass (keyword fields whose defaults are the CLI's defaults), a ``prepare_*``
that checks every option and loads what the run needs before anything is written, and a ``run_*`` that
computes and writes the outputs atomically (temporary file, then rename).  Bad input raises ValueError
(or FileNotFoundError) with one line naming the option; `lossfloor.cli` turns that into exit code 2.

    from lossfloor.workflow import EstimateSettings, prepare_estimate, run_estimate
    run = prepare_estimate(EstimateSettings(data="ring", n=2000, objective="flow", out="out/ring"))
    result = run_estimate(run)              # result.curve, result.total, result.files

Resume: ``estimate`` saves every finished sigma level to ``optimal_loss.partial.json`` and, with
``resume``, reuses the levels saved with the same settings and data fingerprint; ``train`` continues
``checkpoint.pt`` bit for bit (`lossfloor.training`).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .curve import OptimalLossCurve
from .estimators import DEFAULT_QUERIES, Estimator, EstimatorConfig, LevelEstimate
from .files import atomic_write_bytes, atomic_write_text
from .formulation import Objective, get_objective
from .validation import check_model_size, check_out_path

SIGMA_GRID = (0.002, 80.0, 32)  # EDM's range; curve.total covers 6 more decades each side for every preset
DTYPES = ("float32", "float64")
ESTIMATE_FILES = ("optimal_loss.json", "optimal_loss.csv", "optimal_loss.png")
PARTIAL_FILE = "optimal_loss.partial.json"
RESUME_KEYS = ("estimator", "queries", "target_stderr", "total_stderr", "min_queries", "control_subset",
               "subset", "C", "form", "seed", "dtype", "class_conditional")
TRAIN_FILES = ("checkpoint.pt", "log.csv", "binned.csv")
DIAGNOSE_FILES = ("diagnosis.json", "diagnosis.csv", "diagnosis.png")
DIAGNOSE_QUERIES = 1024  # noisy queries per level for the model's loss (and J* when it is estimated)


# -- shared checks ----------------------------------------------------------------------------


def parse_sigmas(sigmas: str | None, sigma_min: float | None = None, sigma_max: float | None = None,
                 num_sigmas: int | None = None) -> list[float]:
    """The sigma grid: an explicit comma list, or geometric from --sigma-min to --sigma-max."""
    if sigmas is not None:
        if (sigma_min, sigma_max, num_sigmas) != (None, None, None):
            raise ValueError("give either --sigmas or --sigma-min/--sigma-max/--num-sigmas, not both")
        try:
            grid = [float(s) for s in sigmas.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--sigmas: expected comma-separated numbers, got {sigmas!r}") from None
        if not grid:
            raise ValueError("--sigmas: no noise levels given")
    else:
        lo, hi, num = (d if v is None else v for v, d in zip((sigma_min, sigma_max, num_sigmas), SIGMA_GRID,
                                                              strict=True))
        if num < 2 or not 0 < lo < hi or not math.isfinite(hi):
            raise ValueError(f"need 0 < --sigma-min < --sigma-max and --num-sigmas >= 2, got {lo}, {hi}, "
                             f"{num}")
        grid = np.geomspace(lo, hi, num).tolist()
    bad = [s for s in grid if not (s > 0 and math.isfinite(s))]
    if bad:
        raise ValueError(f"noise levels must be positive and finite, got {bad[0]}")
    return sorted(set(grid))


def check_out_dir(out, names, *, resume: bool = False, force: bool = False) -> None:
    """--out must be a writable folder (or creatable); existing results need --resume or --force."""
    out = Path(out)
    if resume and force:
        raise ValueError("give either --resume or --force, not both")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a folder")
    check_out_path(out)  # writable, no dangling symbolic link on the way
    existing = [n for n in names if (out / n).exists()]
    if existing and not (resume or force):
        raise ValueError(f"--out {out} already holds {', '.join(existing)}; pass --resume to continue "
                         "or --force to overwrite")


def resolve_device(device: str) -> torch.device:
    """--device as a torch.device, refusing CUDA where there is none."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device: unknown device {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: expected cpu, cuda or cuda:K")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices")
    return dev


def check_coverage(objective: Objective, sigmas) -> None:
    """Raise ValueError unless a curve on `sigmas` (with its tails) covers the objective's noise levels."""
    from .curve import sigma_grid_coverage

    sigma_grid_coverage(objective, sigmas)


# -- estimate ---------------------------------------------------------------------------------


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
    sigmas: str | None = None
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
    dataset: object
    estimator: Estimator
    queries: int
    identity: dict
    done: dict
    out: Path
    main: bool  # rank 0 (or a single process): the one that writes --out

    def header(self) -> str:
        """One line: the data, the estimator, the queries and levels (and how many are done)."""
        data, s = self.estimator.data, self.settings
        return (f"{s.data} ({s.split}): N = {data.n}, D = {data.dim}, data variance {data.variance:.6g}; "
                f"{s.estimator} estimator, {self.queries} queries per level, {len(self.grid)} levels "
                f"({len(self.done)} already done)")


@dataclass
class EstimateResult:
    curve: OptimalLossCurve
    total: object  # curve.TotalLoss
    objective: Objective
    files: list[Path]

    def report(self) -> tuple[list[str], list[str]]:
        """(lines for stdout, warnings for stderr): the curve's table, the total and the critical sigma."""
        curve, total, name = self.curve, self.total, self.objective.name
        lines = [f"{'sigma':>10} {'J*':>12} {'stderr':>10} {'J*/var':>8}"]
        lines += [f"{s:10.4g} {v:12.6g} {e:10.2g} {v / curve.data_variance:8.4f}"
                  for s, v, e in zip(curve.sigma, curve.loss, curve.stderr, strict=True)]
        lines.append(f"total optimal loss of {name}: {total.value:.6g} ± {total.stderr:.2g} per dimension "
                     f"(Monte-Carlo {total.mc_stderr:.2g}, interpolation {total.interpolation_error:.2g}; "
                     f"{total.extrapolated:.3g} of it from beyond the sigma grid)")
        coverage = curve.coverage(self.objective)
        warnings = [] if coverage.supported else [f"warning: {coverage.message}"]
        lines.append(f"critical sigma (J* > 1% of the data variance): {curve.critical_sigma():.4g}")
        if curve.loss[-1] < 0.9 * curve.data_variance:
            lines.append(f"note: J*(sigma_max) is {curve.loss[-1] / curve.data_variance:.2f} of the data "
                         "variance; raise --sigma-max to reach the plateau")
        lines.append(f"wrote {', '.join(str(f) for f in self.files)}")
        return lines, warnings


def default_queries(n: int, queries: int | None = None, per_point: float | None = None) -> int:
    """Queries per level: --queries, else --queries-per-point x N, else min(N, DEFAULT_QUERIES)."""
    if queries is not None and per_point is not None:
        raise ValueError("give either --queries or --queries-per-point, not both")
    if queries is not None:
        return queries
    if per_point is not None:
        if not per_point > 0:
            raise ValueError(f"--queries-per-point must be positive, got {per_point}")
        queries, most = math.ceil(per_point * n), EstimatorConfig.max_queries
        if queries > most:
            raise ValueError(f"--queries-per-point {per_point:g}: {queries:,} queries per level for "
                             f"N = {n:,}; at most {most:,}")
        return queries
    return min(n, DEFAULT_QUERIES)


def _check_estimate_options(s: EstimateSettings) -> None:
    if s.queries_per_point is not None and not s.queries_per_point > 0:
        raise ValueError(f"--queries-per-point must be positive, got {s.queries_per_point}")
    if s.queries is not None and s.queries_per_point is not None:
        raise ValueError("give either --queries or --queries-per-point, not both")
    if s.estimator == "full" and s.subset is not None:
        raise ValueError("--subset applies to the subset estimators (cdol, dol, snis), not full")
    if s.control_subset is not None and (s.estimator != "full" or s.target_stderr is None
                                         or s.min_queries is None):
        raise ValueError("--control-subset needs the full estimator with --target-stderr and --min-queries")
    if s.estimator != "cdol" and s.C is not None:
        raise ValueError("--C applies to --estimator cdol only")
    if s.out_of_core and (s.data_dir, s.split, s.flip, s.n, s.class_conditional) != (None, "train", False,
                                                                                       None, False):
        raise ValueError("--out-of-core reads a .npy file or a folder of .npy shards as given: no "
                         "--data-dir, --split test, --flip, --n or --class-conditional")


def prepare_estimate(s: EstimateSettings) -> EstimateRun:
    """Check everything and load the data; nothing is written (under torchrun rank 0 checks --out)."""
    from .data import load_dataset
    from .distributed import init_from_env, is_main_process, main_only, rank_device
    from .storage import load_rows_dataset

    grid = parse_sigmas(s.sigmas, s.sigma_min, s.sigma_max, s.num_sigmas)
    obj = get_objective(s.objective)
    check_coverage(obj, grid)
    _check_estimate_options(s)
    if s.total_stderr is not None and not (math.isfinite(s.total_stderr) and s.total_stderr > 0):
        raise ValueError(f"--total-stderr must be a positive finite number, got {s.total_stderr}")
    resolve_device(s.device)
    out = Path(s.out)
    if s.resume and s.force:
        raise ValueError("give either --resume or --force, not both")
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
        raise ValueError(f"--class-conditional: {s.data} has no labels")
    n = len(dataset)
    if n < 2:
        raise ValueError(f"{s.data}: need at least 2 data points, got {n}")
    queries = default_queries(n, s.queries, s.queries_per_point)
    config = EstimatorConfig(estimator=s.estimator, queries=queries, subset=s.subset, C=s.C, form=s.form,
                             target_stderr=s.target_stderr, min_queries=s.min_queries,
                             control_subset=s.control_subset, prune=s.prune)
    est = Estimator(dataset.rows(), config, labels=dataset.labels if s.class_conditional else None,
                    device=dev, dtype=getattr(torch, s.dtype))
    identity = {"estimator": s.estimator, "queries": queries, "target_stderr": s.target_stderr,
                "total_stderr": s.total_stderr, "min_queries": s.min_queries,
                "control_subset": s.control_subset,
                "subset": s.subset, "C": s.C, "form": s.form, "seed": s.seed, "dtype": s.dtype,
                "class_conditional": s.class_conditional, "fingerprint": dataset.fingerprint}
    done = main_only(finished_levels, out, identity) if s.resume else {}
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
            doc = json.loads(path.read_text())
            saved = {k: doc["settings"].get(k) for k in RESUME_KEYS} | {"fingerprint": doc["fingerprint"]}
            control = doc["settings"].get("control_queries_used") or [0] * len(doc["sigma"])
            levels = list(zip(doc["sigma"], doc["loss"], doc["stderr"], doc["settings"]["queries_used"],
                              control, strict=True))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"--resume: {path} is not a lossfloor estimate ({err})") from None
        changed = [k for k in identity if saved.get(k) != identity[k]]
        if changed:
            raise ValueError(f"--resume: {path} was made with different settings ({', '.join(changed)}); "
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
    from .plots import plot_curve

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
               data=run.dataset.describe(), scaling=run.dataset.scaling)
    (out / PARTIAL_FILE).unlink(missing_ok=True)
    return EstimateResult(curve, total, obj, files)


# -- train --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """`lossfloor train`: data, objective, network, optimisation and output options."""

    data: str = "digits"
    data_dir: str | None = None
    n: int | None = None
    data_seed: int = 0
    flip: bool = False
    objective: str = "edm"
    schedule: str = "native"  # a name of lossfloor.schedules.SCHEDULES
    curve: str | None = None  # optimal_loss.json of the training data (the optimal-loss schedules)
    model: str | None = None  # default: unet for images, mlp otherwise
    width: int | None = None
    depth: int | None = None
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 100
    ema: float = 0.999
    grad_clip: float = 1.0  # 0 disables clipping
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 500
    device: str = "cpu"
    out: str = "out/train"
    resume: bool = False
    force: bool = False


@dataclass
class TrainRun:
    """A checked training run: the trainer (resumed if asked) and what it trains on."""

    settings: TrainSettings
    trainer: object  # training.Trainer
    dataset: object
    model_kind: str
    parameters: int
    resumed: bool
    out: Path
    files: list[Path] = field(default_factory=list)

    def header(self) -> str:
        """One line: the data, the objective and the network (and the step a resumed run continues at)."""
        obj, s, data = self.trainer.objective, self.settings, self.dataset
        return (f"{s.data}: N = {len(data)}, shape {tuple(data.shape)}; objective {obj.name} "
                f"(target {obj.target}, weight {obj.weight}); {self.model_kind} with {self.parameters:,} "
                "parameters" + (f"; resuming at step {self.trainer.step}" if self.resumed else ""))


def prepare_train(s: TrainSettings) -> TrainRun:
    """Check the options, load the data and build (or resume) the trainer; nothing is written."""
    from .curve import OptimalLossCurve
    from .data import TOYS, load_dataset
    from .models import ModelConfig, build_model, parameter_count
    from .schedules import apply_schedule
    from .training import CHECKPOINT_NAME, TrainConfig, Trainer, data_info, load_checkpoint

    curve = OptimalLossCurve.load(s.curve) if s.curve else None
    obj = apply_schedule(get_objective(s.objective), s.schedule, curve)
    config = TrainConfig(steps=s.steps, batch_size=s.batch_size, lr=s.lr, warmup=s.warmup, ema=s.ema,
                         grad_clip=s.grad_clip or None, seed=s.seed, log_every=s.log_every,
                         checkpoint_every=s.checkpoint_every)
    dev = resolve_device(s.device)
    out = Path(s.out)
    check_out_dir(out, TRAIN_FILES, resume=s.resume, force=s.force)
    dataset = load_dataset(s.data, data_dir=s.data_dir, flip=s.flip, n=s.n, seed=s.data_seed)
    kind = s.model or ("unet" if dataset.is_image else "mlp")
    model_config = ModelConfig(kind, dataset.shape, s.width, s.depth)
    check_model_size(model_config)  # counted on the meta device: a huge --width/--depth is refused first
    net = build_model(model_config)  # raises for a UNet on non-image data
    ckpt = load_checkpoint(out / CHECKPOINT_NAME) if s.resume and (out / CHECKPOINT_NAME).exists() else None
    if ckpt is not None:
        changed = [k for k, v in asdict(config).items() if k not in ("steps", "log_every", "checkpoint_every")
                   and ckpt.train.get(k) != v]
        if changed:
            raise ValueError(f"--resume: {out} was trained with different {', '.join(changed)}; pass the "
                             "same options or use another --out")
    # A toy's size is recorded even when defaulted, so the checkpoint reloads its data if TOY_SIZE changes.
    n = len(dataset) if s.n is None and s.data in TOYS else s.n
    load = {"name": s.data, "data_dir": s.data_dir, "n": n, "seed": s.data_seed, "flip": s.flip}
    trainer = Trainer(dataset.x, obj, model_config, config, out=out, data_info=data_info(dataset, load),
                      device=dev)
    if ckpt is not None:
        trainer.load_state(ckpt)
        if trainer.step >= s.steps:
            raise ValueError(f"--resume: {out} is already at step {trainer.step}; raise --steps")
    return TrainRun(s, trainer, dataset, kind, parameter_count(net), ckpt is not None, out,
                    [out / name for name in TRAIN_FILES])


def run_train(run: TrainRun, progress: bool = True):
    """Train to --steps, checkpointing and logging into --out; returns the trainer."""
    run.out.mkdir(parents=True, exist_ok=True)
    if run.settings.force and not run.resumed:
        for path in run.files:
            path.unlink(missing_ok=True)
    return run.trainer.run(progress=progress)


# -- sample -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleSettings:
    """`lossfloor sample`: checkpoint, sampler and output options."""

    checkpoint: str = ""
    n: int = 64
    steps: int = 18
    sampler: str = "heun"
    sigma_min: float = SIGMA_GRID[0]
    sigma_max: float = SIGMA_GRID[1]
    seed: int = 0
    raw_weights: bool = False
    device: str = "cpu"
    out: str = "out/samples.png"
    npy: bool = False
    force: bool = False


@dataclass
class SampleResult:
    files: list[Path]


def run_sample(s: SampleSettings, progress: bool = True) -> SampleResult:
    """Draw samples with the checkpoint's denoiser and write a PNG (and with `npy` the array)."""
    from .sampling import karras_sigmas, plot_samples
    from .sampling import sample as draw
    from .training import load_checkpoint, reload_data

    if s.n < 1:
        raise ValueError(f"--n must be positive, got {s.n}")
    sigmas = karras_sigmas(s.steps, s.sigma_min, s.sigma_max)
    out = Path(s.out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out}: expected a .png file")
    files = [out] + ([out.with_suffix(".npy")] if s.npy else [])
    existing = [str(p) for p in files if p.exists()]
    if existing and not s.force:
        raise ValueError(f"--out: {', '.join(existing)} already exists; pass --force to overwrite")
    for path in files:  # writable folder above it, no dangling symbolic link: checked before sampling
        check_out_path(path, file=True)
    dev = resolve_device(s.device)
    ckpt = load_checkpoint(s.checkpoint)
    reference = None if len(ckpt.model.shape) == 3 else reload_data(ckpt).x[:5000]
    denoiser = ckpt.denoiser(ema=not s.raw_weights, device=dev)
    x = draw(denoiser, (s.n, *ckpt.model.shape), sigmas, method=s.sampler,
             generator=torch.Generator().manual_seed(s.seed), device=dev, progress=progress)
    nonfinite = int((~torch.isfinite(x)).reshape(len(x), -1).any(1).sum())
    if nonfinite:  # never written with exit code 0
        raise ValueError(f"{s.checkpoint}: {nonfinite} of {s.n} samples hold NaN or Inf; nothing was written")
    out.parent.mkdir(parents=True, exist_ok=True)
    title = (f"{ckpt.data.get('name', '?')}: {ckpt.objective_name}, step {ckpt.step}, {s.sampler} "
             f"{s.steps} levels, {'raw' if s.raw_weights else 'EMA'} weights")
    plot_samples(x, out, reference, title)
    if s.npy:
        buf = io.BytesIO()
        np.save(buf, x.cpu().numpy())
        atomic_write_bytes(files[1], buf.getvalue())
    return SampleResult(files)


# -- diagnose -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiagnoseSettings:
    """`lossfloor diagnose`: checkpoint, data, optimal-loss curve and output options."""

    checkpoint: str = ""
    diffusers: str | None = None  # a diffusers save_pretrained folder instead (integrations.diffusers)
    data: str | None = None  # default: the checkpoint's data, reloaded
    data_dir: str | None = None
    n: int | None = None
    data_seed: int = 0
    flip: bool = False
    curve: str | None = None  # default: estimated here
    levels: int = 16
    sigma_min: float = SIGMA_GRID[0]
    sigma_max: float = SIGMA_GRID[1]
    queries: int = DIAGNOSE_QUERIES
    seed: int = 0
    raw_weights: bool = False
    device: str = "cpu"
    out: str = "out/diagnose"
    force: bool = False


@dataclass
class DiagnoseRun:
    """A checked diagnosis: the checkpoint, its denoiser, the data splits and J* (or how to estimate it)."""

    settings: DiagnoseSettings
    checkpoint: object  # training.Checkpoint
    objective: Objective
    denoiser: object
    train_set: object
    test_set: object | None
    curve: OptimalLossCurve | None  # None: estimated by run_diagnose
    device: torch.device
    out: Path

    def header(self) -> list[str]:
        """What is evaluated: model, data, objective, curve (one line each)."""
        s, ck, obj = self.settings, self.checkpoint, self.objective
        parameters = ck.state.get("parameters")
        test = f"; test N = {len(self.test_set)}" if self.test_set is not None else "; no test split"
        curve = (f"{s.curve} ({len(self.curve.sigma)} levels, {self.curve.settings.get('estimator', '?')} "
                 f"estimator)" if self.curve is not None else
                 f"estimated here: {s.levels} levels from {s.sigma_min:g} to {s.sigma_max:g}, {s.queries} "
                 f"queries each")
        return [f"model:     {ck.path} ({ck.model.kind}"
                + (f", {parameters:,} parameters" if parameters else "")
                + f", step {ck.step}, {'raw' if s.raw_weights else 'EMA'} weights)",
                f"data:      {self.train_set.name} (train N = {len(self.train_set)}{test})",
                f"objective: {describe_objective(obj)}",
                f"curve:     {curve}"]


@dataclass
class DiagnoseResult:
    diagnosis: object  # diagnosis.Diagnosis
    files: list[Path]

    def report(self) -> list[str]:
        """Per level: model loss, J*, gap ± SE, gap/variance (and test); then the objective's totals."""
        d = self.diagnosis
        lines = [f"{'sigma':>9} {'model':>10} {'J*':>10} {'gap':>10} {'± SE':>8} {'gap/var':>8}"
                 + (f" {'test':>10} {'test gap':>10}" if d.test else "")]
        for i, g in enumerate(d.train):
            lines.append(f"{g.sigma:9.4g} {g.model_loss:10.4g} {g.optimal_loss:10.4g} {g.gap:10.4g} "
                         f"{g.gap_stderr:8.2g} {g.relative_gap:8.4f}"
                         + (f" {d.test[i].model_loss:10.4g} {d.test[i].gap:10.4g}" if d.test else ""))
        for split, t in d.totals.items():
            lines.append(f"total {d.objective} loss ({split}): model {t['model']:.5g} "
                         f"± {t['model_stderr']:.2g}, optimal {t['optimal']:.5g} "
                         f"± {t['optimal_stderr']:.2g}, gap {t['gap']:.5g} ± {t['gap_stderr']:.2g}")
        return lines


def describe_objective(obj: Objective) -> str:
    """One line: name, process, target, weight and noise distribution."""
    weight = obj.weight if isinstance(obj.weight, str) else obj.weight.to_dict().get("kind", "?")
    return (f"{obj.name} (process {obj.process.name}, target {obj.target}, weight {weight}, "
            f"noise {obj.time_dist!r})")


def check_diagnose_grid(s: DiagnoseSettings) -> None:
    """The queries and the sigma grid of a diagnosis (a lossfloor checkpoint or a diffusers folder)."""
    if s.queries < 2:
        raise ValueError(f"--queries must be at least 2, got {s.queries}")
    if s.curve is None and (s.levels < 2 or not 0 < s.sigma_min < s.sigma_max):
        raise ValueError(f"need --levels >= 2 and 0 < --sigma-min < --sigma-max, got {s.levels}, "
                         f"{s.sigma_min}, {s.sigma_max}")


def prepare_diagnose(s: DiagnoseSettings) -> DiagnoseRun:
    """Check the options, load the checkpoint, the data and the curve; nothing is written."""
    from .data import load_dataset
    from .training import load_checkpoint, reload_data

    if s.diffusers is not None:
        from .integrations.diffusers import prepare_diffusers_diagnose

        return prepare_diffusers_diagnose(s)
    if not s.checkpoint:
        raise ValueError("give --checkpoint (a lossfloor checkpoint) or --diffusers (a diffusers folder)")
    if s.data is None and (s.data_dir, s.n, s.flip, s.data_seed) != (None, None, False, 0):
        raise ValueError("--data-dir, --n, --data-seed and --flip apply with --data (without it the "
                         "checkpoint's own data is reloaded as it was trained)")
    check_diagnose_grid(s)
    dev = resolve_device(s.device)
    out = Path(s.out)
    check_out_dir(out, DIAGNOSE_FILES, force=s.force)
    ckpt = load_checkpoint(s.checkpoint)
    if s.data is None:
        train_set = reload_data(ckpt)
        test_load = lambda: reload_data(ckpt, "test")  # noqa: E731
    else:
        train_set = load_dataset(s.data, data_dir=s.data_dir, flip=s.flip, n=s.n, seed=s.data_seed)
        test_load = lambda: load_dataset(s.data, data_dir=s.data_dir, split="test", seed=s.data_seed)  # noqa: E731
    if tuple(train_set.shape) != ckpt.model.shape:
        raise ValueError(f"the checkpoint was trained on data of shape {ckpt.model.shape}, but "
                         f"{train_set.name} has shape {tuple(train_set.shape)}")
    test_set = load_test_split(test_load)
    curve = None if s.curve is None else _matching_curve(s.curve, train_set)
    denoiser = ckpt.denoiser(ema=not s.raw_weights, device=dev)
    return DiagnoseRun(s, ckpt, ckpt.objective, denoiser, train_set, test_set, curve, dev, out)


def load_test_split(load):
    """`load()`'s test split, or None where the dataset has none (`data.NoTestSplit`, or Fashion-MNIST's
    t10k files absent); a damaged test file raises its one-line InputError like any other input."""
    from .data import NoTestSplit

    try:
        return load()
    except (NoTestSplit, FileNotFoundError):
        return None


def _matching_curve(path, train_set) -> OptimalLossCurve:
    curve = OptimalLossCurve.load(path)
    if curve.fingerprint != train_set.fingerprint:
        raise ValueError(f"--curve {path} was computed on other data than {train_set.name} "
                         f"(fingerprint {curve.fingerprint[:12] or 'missing'} vs "
                         f"{train_set.fingerprint[:12]}); recompute it with `lossfloor estimate`")
    if curve.settings.get("class_conditional"):
        raise ValueError(f"--curve {path} is class-conditional; the model is unconditional")
    return curve


class SplitBars:
    """Progress callback over splits: one bar of `levels` sigma levels per split, opened in turn."""

    def __init__(self, splits: list[str], levels: int, enabled: bool = True, desc: str = "model loss"):
        self.splits, self.levels, self.enabled, self.desc = list(splits), levels, enabled, desc
        self.bar = None

    def __call__(self, k: int = 1) -> None:
        for _ in range(k):
            if self.bar is None or self.bar.n >= self.levels:
                self.close()
                split = self.splits.pop(0) if self.splits else "extra"
                self.bar = tqdm(total=self.levels, desc=f"{self.desc} ({split})", unit="level",
                                disable=not self.enabled)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_diagnose(run: DiagnoseRun, progress: bool = True) -> DiagnoseResult:
    """Estimate J* if needed, evaluate the model on train (and test) data and write JSON, CSV and PNG."""
    from .diagnosis import diagnose

    if run.settings.diffusers is not None:  # integrations.diffusers.DiffusersDiagnoseRun
        return run.execute(progress)
    s, obj, ckpt = run.settings, run.objective, run.checkpoint
    sigmas = np.geomspace(s.sigma_min, s.sigma_max, s.levels) if run.curve is None else run.curve.sigma

    def evaluate(curve, test_x, bars):
        return diagnose(run.denoiser, obj, curve, run.train_set.x, test_x=test_x, queries=s.queries,
                        seed=s.seed, progress=bars)

    return execute_diagnosis(
        evaluate, run, sigmas,
        head={"checkpoint": str(ckpt.path), "step": ckpt.step, "model": ckpt.model.to_dict()},
        tail={"weights": "raw" if s.raw_weights else "ema"},
        title=f"{run.train_set.name}: {obj.name} ({ckpt.model.kind}, step {ckpt.step}) vs optimal loss",
        progress=progress)


def execute_diagnosis(evaluate, run, sigmas, *, head: dict, tail: dict, title: str,
                      progress: bool = True) -> DiagnoseResult:
    """The body every diagnosis shares (lossfloor checkpoints, diffusers folders): estimate J* at `sigmas`
    when the run has no curve, `evaluate(curve, test_x, bars)` on the splits, write JSON, CSV and PNG."""
    from .diagnosis import plot_diagnosis

    s, out, curve = run.settings, Path(run.out), run.curve
    out.mkdir(parents=True, exist_ok=True)
    if curve is None:
        est = Estimator(run.train_set.rows(), EstimatorConfig(queries=s.queries), device=run.device)
        curve = est.curve(sigmas, seed=s.seed, progress=progress)
        curve.fingerprint = run.train_set.fingerprint
    test_x = None if run.test_set is None else run.test_set.x
    bars = SplitBars(["train"] + ([] if test_x is None else ["test"]), len(sigmas), progress)
    try:
        result = evaluate(curve, test_x, bars)
    finally:
        bars.close()
    meta = {**head, "data": run.train_set.describe(),
            "test_data": None if run.test_set is None else run.test_set.describe(),
            "objective_spec": run.objective.to_dict(), "queries": s.queries, "seed": s.seed, **tail,
            "data_variance": curve.data_variance}
    files = [out / name for name in DIAGNOSE_FILES]
    plot_diagnosis(result, files[2], title)
    atomic_write_text(files[1], result.csv_text())
    atomic_write_text(files[0], json.dumps({**meta, **result.to_dict()}, indent=1))
    return DiagnoseResult(result, files)
