"""The diagnosis study: mainstream variants trained on the same data and their per-sigma x0-loss gaps to
J*(sigma) on one plot (the analogue of the optimal-loss paper's Figure 2).

A cell is one (dataset, variant): a trained model (resumable in ``runs/<dataset>/<variant>``) diagnosed
on both splits (``cells/<dataset>_<variant>.json``, reused while budget, seed and J* grid match).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lossfloor.core.files import atomic_write_text
from lossfloor.data.load import load_dataset
from lossfloor.evaluate.diagnosis import diagnose, totals
from lossfloor.evaluate.sampling import sample
from lossfloor.floor.config import EstimatorConfig
from lossfloor.nets.networks import ModelConfig
from lossfloor.objective.objective import get_objective
from lossfloor.studies.common import (
    cached_floor,
    check_choice,
    check_seeds,
    csv_text,
    json_plain,
    run_cells,
    text_table,
    train_run,
    write_json,
)
from lossfloor.train.trainer import TrainConfig, data_info

DIAGNOSE_VARIANTS = ("vp", "ve", "edm", "flow")  # VP-eps, VE-eps, EDM-F, flow matching (velocity)
DIAGNOSE_DATASETS = ("digits", "fashion-mnist")
COMMON_OBJECTIVE = "edm"  # the common weighting under which the totals of all variants are also compared


@dataclass(frozen=True)
class DiagnoseBudget:
    """Training and evaluation budget of one dataset in the diagnosis study."""

    model: str
    width: int
    steps: int
    batch_size: int
    levels: int  # sigma levels, geometric over [0.002, 80]
    floor_queries: int  # queries per level of the full J* estimator
    model_queries: int  # noisy queries per level and split for the model losses
    samples: int
    lr: float = 2e-3


_QUICK = DiagnoseBudget(model="mlp", width=64, steps=40, batch_size=64, levels=5, floor_queries=64,
                        model_queries=64, samples=4)
DIAGNOSE_BUDGETS = {
    "cpu": {"digits": DiagnoseBudget(model="unet", width=16, steps=1000, batch_size=128, levels=14,
                                     floor_queries=2048, model_queries=1024, samples=36),
            "fashion-mnist": DiagnoseBudget(model="unet", width=16, steps=400, batch_size=64, levels=14,
                                            floor_queries=1024, model_queries=1024, samples=36)},
    "quick": {"digits": _QUICK, "fashion-mnist": _QUICK},
}
# What a run takes, printed before it starts (measured on the 2-core project machine under a load of ~10).
DIAGNOSE_BUDGET_TIMES = {
    "cpu": "the committed results; about 30 minutes on 2 CPU cores",
    "quick": "a smoke test; about 10 minutes on a busy 2-core machine (digits alone: about 4)",
}


def diagnose_sigmas(budget: DiagnoseBudget) -> np.ndarray:
    """The study's sigma grid: `levels` geometric levels over [0.002, 80]."""
    return np.geomspace(0.002, 80.0, budget.levels)


def diagnose_floor(train, budget: DiagnoseBudget, path: Path, seed: int, progress: bool):
    """J*(sigma) of the training set on the study's grid (reused from `path` if data and settings match)."""

    return cached_floor(path, train, diagnose_sigmas(budget), EstimatorConfig(queries=budget.floor_queries),
                        seed=seed, progress=progress)


def diagnose_variant(train, test, variant: str, budget: DiagnoseBudget, curve, run_dir: Path, seed: int,
                     progress: bool) -> dict:
    """Train one variant (resumable in `run_dir`), diagnose it on both splits and draw samples."""

    config = TrainConfig(steps=budget.steps, batch_size=budget.batch_size, lr=budget.lr, seed=seed,
                         log_every=max(1, budget.steps // 10), checkpoint_every=max(1, budget.steps // 4))
    model = ModelConfig(budget.model, train.shape, budget.width)
    info = data_info(train, {"name": train.name, "n": None, "seed": 0, "flip": False})
    trainer = train_run(train, variant, model, config, run_dir, data_info=info, progress=progress)
    denoiser = trainer.denoiser()
    result = diagnose(denoiser, trainer.objective, curve, train.x, test_x=test.x,
                      queries=budget.model_queries, seed=seed)
    common = get_objective(COMMON_OBJECTIVE)
    x = sample(denoiser, (budget.samples, *train.shape), generator=torch.Generator().manual_seed(seed))
    return {"variant": variant, "objective": trainer.objective.name, "target": trainer.objective.target,
            "steps": trainer.step, "train_seconds": trainer.elapsed, **result.to_dict(),
            "common_objective": COMMON_OBJECTIVE,
            "common_totals": {s: totals(m, curve, common) for s, m in result.model_curves.items()},
            "samples": x.clamp(-1, 1).reshape(len(x), -1).tolist()}


def run_diagnose_study(datasets, variants, budget_name: str, out, *, seed: int = 0, data_dir=None,
                       progress: bool = True) -> dict:
    """Train every variant on every dataset, diagnose each against J*, write JSON/CSV and figures."""
    from lossfloor.plots.studies import plot_diagnose_study, plot_variant_samples

    check_choice("budget", budget_name, DIAGNOSE_BUDGETS)
    for v in variants:
        get_objective(v)
    for name in datasets:
        check_choice("dataset", name, DIAGNOSE_DATASETS)
    check_seeds([seed], "--seed")
    data = {}
    for name in datasets:  # every dataset loads before anything is written
        kw = {"data_dir": data_dir} if name == "fashion-mnist" else {}
        data[name] = load_dataset(name, **kw), load_dataset(name, split="test", **kw)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"budget": budget_name, "seed": seed, "datasets": {}}
    for name in datasets:
        budget = DIAGNOSE_BUDGETS[budget_name][name]
        train, test = data[name]
        curve = diagnose_floor(train, budget, out / f"optimal_loss_{name}.json", seed, progress)
        key = json_plain({"budget": asdict(budget), "seed": seed, "floor_sigma": curve.sigma.tolist(),
                          "floor_fingerprint": curve.fingerprint})

        def compute(v, train=train, test=test, budget=budget, curve=curve, name=name, key=key) -> dict:
            r = diagnose_variant(train, test, v, budget, curve, out / "runs" / name / v, seed, progress)
            return {**r, "cell": key}

        results = run_cells(list(variants), lambda v, name=name: out / "cells" / f"{name}_{v}.json", compute,
                            matches=lambda r, key=key: r.get("cell") == key, progress=False)
        results = [{k: v for k, v in r.items() if k != "cell"} for r in results]
        report["datasets"][name] = {"budget": asdict(budget), "data": train.describe(),
                                    "test_data": test.describe(), "optimal_loss": curve.to_dict(),
                                    "variants": results}
        plot_variant_samples(results, train.shape, out / f"samples_{name}.png", name)
    write_json(out / "diagnose_study.json", report)
    atomic_write_text(out / "gaps.csv", diagnose_gaps_csv(report))
    atomic_write_text(out / "totals.csv", diagnose_totals_csv(report))
    plot_diagnose_study(report, out / "gaps.png")
    return report


GAP_FIELDS = ("sigma", "model_loss", "model_stderr", "optimal_loss", "optimal_stderr", "gap", "gap_stderr",
              "relative_gap")
TOTAL_FIELDS = ("own_model", "own_optimal", "own_gap", "own_gap_stderr", "edm_weighted_model",
                "edm_weighted_optimal", "edm_weighted_gap", "edm_weighted_gap_stderr", "max_relative_gap",
                "sigma_of_max_gap")


def diagnose_gaps_csv(report: dict) -> str:
    """One row per (dataset, variant, split, sigma)."""
    rows = [{"dataset": name, "variant": r["variant"], "split": split,
             **{k: f"{g[k]:.6g}" for k in GAP_FIELDS}}
            for name, d in report["datasets"].items() for r in d["variants"] for split in ("train", "test")
            for g in r[split] or []]
    return csv_text(rows, ["dataset", "variant", "split", *GAP_FIELDS])


def _totals_row(r: dict, split: str) -> list[float]:
    own, common = r["totals"][split], r["common_totals"][split]
    worst = max(r[split], key=lambda g: g["relative_gap"])
    return [own["model"], own["optimal"], own["gap"], own["gap_stderr"], common["model"], common["optimal"],
            common["gap"], common["gap_stderr"], worst["relative_gap"], worst["sigma"]]


def diagnose_totals_csv(report: dict) -> str:
    """One row per (dataset, variant, split): totals under the variant's own objective and under EDM's."""
    rows = [{"dataset": name, "variant": r["variant"], "target": r["target"], "steps": r["steps"],
             "split": split,
             **{k: f"{v:.6g}" for k, v in zip(TOTAL_FIELDS, _totals_row(r, split), strict=True)}}
            for name, d in report["datasets"].items() for r in d["variants"] for split in ("train", "test")]
    return csv_text(rows, ["dataset", "variant", "target", "steps", "split", *TOTAL_FIELDS])


def diagnose_terminal_table(report: dict) -> str:
    """Per (dataset, variant): total gaps (own objective and EDM weighting, train and test) ± SE."""
    head = ["data", "variant", "target", "steps", "gap own (train)", "gap EDM-weighted (train)",
            "gap EDM-weighted (test)", "max gap / var. at σ", "floor"]
    lines = []
    for name, d in report["datasets"].items():
        for r in d["variants"]:
            own, edm = r["totals"]["train"], r["common_totals"]["train"]
            test = r["common_totals"].get("test")
            worst = max(r["train"], key=lambda g: g["relative_gap"])
            lines.append([name, r["variant"], r["target"], r["steps"],
                          f"{own['gap']:.4g} ± {own['gap_stderr']:.2g}",
                          f"{edm['gap']:.4g} ± {edm['gap_stderr']:.2g}",
                          "–" if test is None else f"{test['gap']:.4g} ± {test['gap_stderr']:.2g}",
                          f"{worst['relative_gap']:.3g} at {worst['sigma']:.3g}",
                          "VIOLATION" if r["floor_violation"] else "ok"])
    return text_table(head, lines)
