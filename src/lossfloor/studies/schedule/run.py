"""The training-schedule comparison: the paper's optimal-loss schedule, its ablations and the baselines.

Each objective (EDM with F-prediction, rectified flow with velocity) is trained under its native schedule,
the paper's schedule, three ablations (weight only, adaptive density only, no bump) and the baselines that
apply to it, with the same network, optimizer, steps, batch and seeds.  Every model is evaluated with the
same EDM Heun sampler: classifier-feature Fréchet distance, NELBO (bits/dim) on the test split, the
EDM-weighted total gap to J* and the per-sigma gap on the training data.  A cell is one (objective,
schedule, seed) (``<out>/cells/<cell>.json``); an interrupted study resumes per cell (and per checkpoint).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.stats
import torch

from lossfloor.core.files import atomic_write_text
from lossfloor.data.load import load_dataset
from lossfloor.evaluate.diagnosis import model_curve, totals
from lossfloor.evaluate.likelihood import nelbo
from lossfloor.evaluate.metrics import frechet_distance
from lossfloor.evaluate.sampling import karras_sigmas, sample
from lossfloor.floor.config import EstimatorConfig
from lossfloor.nets.networks import ModelConfig
from lossfloor.objective.objective import get_objective
from lossfloor.studies.common import (
    cached_classifier,
    cached_floor,
    check_choice,
    csv_text,
    fmt_pm,
    load_floor,
    markdown_table,
    mean_se,
    paired_difference,
    run_cells,
    seeded,
    text_table,
    train_run,
    write_json,
)
from lossfloor.train.schedules import apply_schedule
from lossfloor.train.trainer import TrainConfig

# Which schedules each objective is trained under (the first is the reference for paired differences).
SCHEDULE_STUDY = {
    "edm": ("native", "optimal-loss", "optimal-loss-weight", "optimal-loss-density", "optimal-loss-nobump",
            "edm2-learned"),
    "flow": ("native", "optimal-loss", "optimal-loss-weight", "optimal-loss-density", "optimal-loss-nobump",
             "logit-normal", "min-snr"),
}
DATASETS = ("digits", "fashion-mnist")


@dataclass(frozen=True)
class SchedulePreset:
    """Data, network, optimisation and evaluation budget of the study (equal for every schedule)."""

    dataset: str = "digits"
    model: str = "mlp"
    width: int | None = 128
    depth: int | None = 2
    steps: int = 500
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 50
    ema: float = 0.99
    seeds: int = 3
    first_seed: int = 0  # seeds first_seed, first_seed + 1, ... (fresh seeds for a confirmatory run)
    every: int = 50  # steps between updates of the adaptive density
    samples: int = 2000
    sample_steps: int = 18
    nelbo_points: int | None = None  # test points for the NELBO (None: the whole test split)
    nelbo_samples: int = 4
    gap_queries: int = 256
    floor_queries: int = 1024
    classifier_steps: int = 600
    n_train: int | None = None
    horizon: float = 1.0  # updates the adaptive density's bin gap is smoothed over (1: none, as first run)
    critical_fraction: float = 0.01  # sigma* of the optimal-loss weight: J*/V crosses this (interpolated)
    schedules: tuple[str, ...] | None = None  # trained for every objective (None: SCHEDULE_STUDY's)


# Fields added after cells were committed, with the value those cells ran with: a cell whose settings lack
# one matches a preset that has this value.
LEGACY_SETTINGS = {"horizon": 1.0, "critical_fraction": 0.01, "first_seed": 0}
# The powered comparison (issue 23): the family of comparisons declared before running (docs/schedules.md).
POWERED_SCHEDULES = ("native", "optimal-loss", "min-snr", "edm2-learned", "logit-normal")


PRESETS = {
    # The committed run: digits, a small MLP, 500 steps (39 cells in 7 min on 2 busy CPU cores).
    "default": SchedulePreset(),
    # For a GPU: Fashion-MNIST, the UNet, 20k steps, 10k samples.
    "full": SchedulePreset(dataset="fashion-mnist", model="unet", width=32, depth=None, steps=20_000,
                           warmup=500, ema=0.999, every=200, samples=10_000, sample_steps=32,
                           nelbo_points=2000, nelbo_samples=8, gap_queries=1024, floor_queries=4096,
                           classifier_steps=3000),
    # Fashion-MNIST on 2 CPU cores: the default's recipe with a wider MLP and a 1,000-point NELBO subset.
    "fashion": SchedulePreset(dataset="fashion-mnist", width=256, nelbo_points=1000),
    # A longer check of the default (4x the steps, the library's K = 100), for a subset of schedules.
    "long": SchedulePreset(steps=2000, every=100),
    # The powered comparison: the long recipe, 6 seeds, the five schedules of POWERED_SCHEDULES on both
    # objectives, the adaptive density smoothed over 10 updates (the library's default).
    "powered": SchedulePreset(steps=2000, every=100, seeds=6, horizon=10.0, schedules=POWERED_SCHEDULES),
    # Post hoc (not in the declared family): the powered recipe with the bin gap unsmoothed (horizon 1), and
    # with sigma* where J* is 5% of V (w* = 20/V, near the grid sigma* the first runs used).
    "powered-h1": SchedulePreset(steps=2000, every=100, seeds=6, horizon=1.0,
                                 schedules=("native", "optimal-loss")),
    "powered-cf5": SchedulePreset(steps=2000, every=100, seeds=6, horizon=10.0, critical_fraction=0.05,
                                  schedules=("native", "optimal-loss")),
    # Confirmatory (declared in docs/schedules.md before running): powered-cf5 on six fresh seeds.
    "confirm-cf5": SchedulePreset(steps=2000, every=100, seeds=6, first_seed=6, horizon=10.0,
                                  critical_fraction=0.05, schedules=("native", "optimal-loss")),
    # For tests: seconds.
    "quick": SchedulePreset(width=32, depth=1, steps=20, warmup=2, seeds=2, every=5, samples=64,
                            sample_steps=4, nelbo_points=32, nelbo_samples=1, gap_queries=16,
                            floor_queries=64, classifier_steps=20, n_train=256),
}


def cell_name(objective: str, schedule: str, seed: int) -> str:
    return f"{objective}_{schedule}_seed{seed}"


def _data(preset: SchedulePreset, data_dir=None):

    kw = {"data_dir": data_dir} if preset.dataset == "fashion-mnist" else {}
    train = load_dataset(preset.dataset, n=preset.n_train, **kw)
    test = load_dataset(preset.dataset, split="test", **kw)
    return train, test


def _floor(train, preset: SchedulePreset, out: Path):

    config = EstimatorConfig("full", queries=min(preset.floor_queries, len(train)))
    sigmas = np.geomspace(1e-3, 1e2, 26)
    return cached_floor(out / "floor.json", train, sigmas, config, seed=0)


def study_objective(objective: str, schedule: str, curve, preset: SchedulePreset):
    """The objective of one cell: the named base objective under the named schedule."""
    options = {"every": preset.every, "horizon": preset.horizon} if schedule in (
        "optimal-loss", "optimal-loss-density", "optimal-loss-nobump") else {}
    if schedule.startswith("optimal-loss"):
        options["critical_fraction"] = preset.critical_fraction
    return apply_schedule(objective, schedule, curve, **options)


def _evaluate(trainer, train, test, curve, classifier, preset: SchedulePreset, seed: int) -> dict:
    """Fréchet distance, NELBO, total EDM-weighted gap and per-sigma gap, samples for the grid."""

    denoiser = trainer.denoiser()
    gen = torch.Generator().manual_seed(10_000 + seed)
    x = sample(denoiser, (preset.samples, *train.shape), karras_sigmas(preset.sample_steps), generator=gen)
    nonfinite = int((~torch.isfinite(x)).reshape(len(x), -1).any(1).sum())
    x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1, 1)
    fd = frechet_distance(classifier, test.x, x)
    test_x = test.x[: preset.nelbo_points]
    step = float(test.scaling["scale"]) if test.is_image else None
    bound = nelbo(denoiser, test_x, samples=preset.nelbo_samples, quantization_step=step, seed=seed)
    model = model_curve(denoiser, train.x, curve.sigma, preset.gap_queries, seed=seed)
    edm = totals(model, curve, get_objective("edm"))
    return {"fd": fd, "bits_per_dim": bound.bits_per_dim, "bits_per_dim_se": bound.stderr,
            "gap_edm": edm["gap"], "gap_edm_se": edm["gap_stderr"], "nonfinite_samples": nonfinite,
            "sigma": [float(s) for s in curve.sigma], "model_loss": [float(v) for v in model.loss],
            "model_loss_se": [float(v) for v in model.stderr],
            "gap": [float(m - o) for m, o in zip(model.loss, curve.loss, strict=True)],
            "samples": x[:64].reshape(64, -1).tolist()}


def _density_history(trainer) -> dict | None:
    p = trainer.objective.time_dist
    if not hasattr(p, "history"):
        return None
    widths = np.diff(p.edges)
    se = p.gap_stderr()
    return {"edges_log_sigma": p.edges.tolist(), "every": p.every,
            "density": [(np.asarray(h) / np.sum(h) / widths).tolist() for h in p.history],
            "bin_jstar": p.bin_jstar.tolist(), "bin_weight": p.bin_weight.tolist(),
            "bin_loss": p.j_model.tolist(),
            "bin_loss_stderr": [float(v) if np.isfinite(v) else None for v in se]}


def run_schedule_study(preset_name: str = "default", out="results/schedule", *, objectives=None,
                       schedules=None, data_dir=None, progress: bool = True) -> dict:
    """Train and evaluate every (objective, schedule, seed) cell (finished cells are skipped); report.

    `schedules` restricts the study to those names (each objective keeps the ones of SCHEDULE_STUDY it has).
    """
    check_choice("preset", preset_name, PRESETS)
    preset = PRESETS[preset_name]
    objectives = tuple(objectives or SCHEDULE_STUDY)
    for o in objectives:
        check_choice("objective", o, SCHEDULE_STUDY)
    trained = {o: preset.schedules or SCHEDULE_STUDY[o] for o in objectives}
    known = {s for o in objectives for s in trained[o]}
    for s in schedules or ():
        check_choice("schedule", s, sorted(known))
    out = Path(out)
    train, test = _data(preset, data_dir)  # fails before anything is written
    (out / "cells").mkdir(parents=True, exist_ok=True)
    curve = _floor(train, preset, out)
    classifier, accuracy = cached_classifier(out / "classifier.pt", train, test, preset.classifier_steps)
    cells = [(o, s, seed) for o in objectives for s in trained[o] if not schedules or s in schedules
             for seed in range(preset.first_seed, preset.first_seed + preset.seeds)]
    settings = {k: v for k, v in asdict(preset).items() if k != "schedules"}

    def compute(cell) -> dict:

        objective, schedule, seed = cell
        obj = study_objective(objective, schedule, curve, preset)
        config = TrainConfig(steps=preset.steps, batch_size=preset.batch_size, lr=preset.lr,
                             warmup=preset.warmup, ema=preset.ema, seed=seed,
                             log_every=max(1, preset.steps // 10), checkpoint_every=max(1, preset.steps // 2))
        model = ModelConfig(preset.model, train.shape, preset.width, preset.depth)
        start = time.time()
        with seeded(seed):
            trainer = train_run(train, obj, model, config, out / "runs" / cell_name(*cell))
            seconds = time.time() - start
            result = _evaluate(trainer, train, test, curve, classifier, preset, seed)
        return {"objective": objective, "schedule": schedule, "seed": seed, "preset": preset_name,
                "settings": settings, "train_seconds": seconds, "steps": preset.steps,
                "classifier_accuracy": accuracy, "density_history": _density_history(trainer), **result}

    results = run_cells(cells, lambda c: out / "cells" / f"{cell_name(*c)}.json", compute,
                        matches=lambda r: {**LEGACY_SETTINGS, **r.get("settings", {})} == settings,
                        progress=progress,
                        desc="schedule study", name_of=lambda c: cell_name(*c))
    return write_schedule_report(results, out, curve)


# -- the report --------------------------------------------------------------------------------------


METRICS = (("fd", "Fréchet distance"), ("bits_per_dim", "NELBO bits/dim"), ("gap_edm", "EDM-weighted gap"))


def interval95(se: float, n: int) -> float:
    """Half-width of a 95% t interval for a mean over n paired seeds."""
    return float(scipy.stats.t.ppf(0.975, n - 1) * se) if n > 1 else math.nan


def in_study_order(results: list[dict]) -> list[dict]:
    """Cells sorted as the study lists them: objective, schedule (native first), seed."""
    objectives = list(SCHEDULE_STUDY)
    names = list(dict.fromkeys(s for o in objectives for s in SCHEDULE_STUDY[o]))
    names = sorted(names, key=lambda s: (s != "native", not s.startswith("optimal-loss"), names.index(s)))

    def key(r):
        o, s = r["objective"], r["schedule"]
        return (objectives.index(o) if o in objectives else len(objectives), o,
                names.index(s) if s in names else len(names), s, r["seed"])

    return sorted(results, key=key)


def paired_t_p(diff: float, se: float, n: int) -> float:
    """Two-sided p of a paired t-test of mean difference `diff` with standard error `se` over n pairs."""
    if n < 2 or not se > 0:
        return math.nan
    return float(2 * scipy.stats.t.sf(abs(diff / se), n - 1))


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (nan stays nan, outside the family)."""
    p = np.asarray(p_values, dtype=float)
    ok = np.flatnonzero(np.isfinite(p))
    out = np.full(len(p), math.nan)
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        out[i] = running
    return out.tolist()


def aggregate(results: list[dict]) -> list[dict]:
    """Per (objective, schedule): mean ± SE of each metric and the paired difference to native (95% t)."""
    rows = []
    by = {}
    for r in in_study_order(results):
        by.setdefault((r["objective"], r["schedule"]), {})[r["seed"]] = r
    for (objective, schedule), seeds in by.items():
        native = by.get((objective, "native"), {})
        row = {"objective": objective, "schedule": schedule, "seeds": len(seeds)}
        for key, _ in METRICS:
            mean, se = mean_se([r[key] for r in seeds.values()])
            diff, dse, n = paired_difference({s: r[key] for s, r in seeds.items()},
                                             {s: r[key] for s, r in native.items()})
            base = mean_se([r[key] for r in native.values()])[0] if native else math.nan
            rel = diff / base if base else math.nan
            row.update({key: mean, f"{key}_se": se, f"{key}_diff": diff,
                        f"{key}_diff_ci95": interval95(dse, n), f"{key}_rel_diff": rel,
                        f"{key}_p": paired_t_p(diff, dse, n) if schedule != "native" else math.nan})
        rows.append(row)
    for key, _ in METRICS:  # one family per metric: every comparison with native in this report
        for row, adjusted in zip(rows, holm([r[f"{key}_p"] for r in rows]), strict=True):
            row[f"{key}_p_holm"] = adjusted
    return rows


def _fmt_diff(row, key) -> str:
    if row["schedule"] == "native":
        return "(reference)"
    d, h = row[f"{key}_diff"], row[f"{key}_diff_ci95"]
    digits = 3 if abs(d) < 100 else 1
    rel = f" ({100 * row[f'{key}_rel_diff']:+.0f}%)" if key == "fd" else ""
    return f"{d:+.{digits}f} ± {h:.{digits}f}{rel}"


def summary_rows(rows: list[dict]) -> list[list[str]]:
    return [[r["objective"], r["schedule"], str(r["seeds"]), fmt_pm(r["fd"], r["fd_se"]), _fmt_diff(r, "fd"),
             fmt_pm(r["bits_per_dim"], r["bits_per_dim_se"]), _fmt_diff(r, "bits_per_dim"),
             f"{r['gap_edm']:.4f} ± {r['gap_edm_se']:.4f}", _fmt_diff(r, "gap_edm")] for r in rows]


def _fmt_p(p: float) -> str:
    return "" if not math.isfinite(p) else f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def comparison_rows(rows: list[dict]) -> list[list[str]]:
    """Per comparison with native: the paired t-test p and its Holm adjustment, for each metric."""
    out = []
    for r in rows:
        if r["schedule"] == "native":
            continue
        line = [r["objective"], r["schedule"], str(r["seeds"])]
        for key, _ in METRICS:
            p, ph = r[f"{key}_p"], r[f"{key}_p_holm"]
            mark = " *" if ph < 0.05 else ""
            line += [_fmt_diff(r, key), _fmt_p(p), _fmt_p(ph) + mark]
        out.append(line)
    return out


COMPARISON_HEAD = ["objective", "schedule", "seeds", "ΔFD (95%)", "p", "p Holm", "Δ bits/dim (95%)", "p",
             "p Holm", "Δ gap (95%)", "p", "p Holm"]
HEAD = ["objective", "schedule", "seeds", "FD", "ΔFD vs native (95%)", "bits/dim",
        "Δ bits/dim (95%)", "EDM gap", "Δ gap (95%)"]
CSV_FIELDS = ("objective", "schedule", "seed", "fd", "bits_per_dim", "bits_per_dim_se", "gap_edm",
              "gap_edm_se",
              "nonfinite_samples", "train_seconds", "steps")


def write_schedule_report(results: list[dict], out, curve=None) -> dict:
    """cells.csv (one row per cell), summary.{json,md}, gaps.csv, and the figures."""
    from lossfloor.plots.schedule import (  # matplotlib only when drawing
        plot_density_history,
        plot_gaps,
        plot_schedule_samples,
    )

    out = Path(out)
    if curve is None:
        curve = load_floor(out / "floor.json")[0]
    results = in_study_order(results)
    rows = aggregate(results)
    cell_rows = [{k: r[k] for k in CSV_FIELDS} for r in results]
    atomic_write_text(out / "cells.csv", csv_text(cell_rows, CSV_FIELDS))
    gap_rows = [{"objective": r["objective"], "schedule": r["schedule"], "seed": r["seed"], "sigma": s,
                 "model_loss": m, "optimal_loss": o, "gap": m - o}
                for r in results for s, m, o in zip(r["sigma"], r["model_loss"], curve.loss, strict=True)]
    atomic_write_text(out / "gaps.csv", csv_text(gap_rows, ("objective", "schedule", "seed", "sigma",
                                                            "model_loss", "optimal_loss", "gap")))
    write_json(out / "summary.json", {"rows": rows, "preset": results[0]["settings"] if results else None})
    n_family = sum(r["schedule"] != "native" and math.isfinite(r["fd_p"]) for r in rows)
    tests = markdown_table(COMPARISON_HEAD, comparison_rows(rows),
                           f"Comparisons with native: two-sided paired t-test over seeds; Holm-adjusted "
                           f"within each metric over its {n_family} comparisons here (*: adjusted p < 0.05)")
    atomic_write_text(out / "summary.md", markdown_table(HEAD, summary_rows(rows)) + "\n" + tests)
    if results:
        plot_density_history(results, curve, out / "adaptive_density.png")
        plot_gaps(results, curve, out / "gaps.png")
        plot_schedule_samples(results, out / "samples.png")
    return {"rows": rows, "results": results}


def terminal_table(report: dict) -> str:
    return text_table(HEAD, summary_rows(report["rows"]))


__all__ = ["DATASETS", "POWERED_SCHEDULES", "PRESETS", "SCHEDULE_STUDY", "SchedulePreset", "aggregate",
           "cell_name", "holm", "interval95", "paired_t_p",
           "run_schedule_study", "study_objective", "terminal_table", "write_schedule_report"]
