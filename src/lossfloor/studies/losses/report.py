"""The losses study's report: mean ± SE over seeds per (dataset, target, loss), paired differences between
the NELBO- and simple-trained model of each seed, the seed paper's 2-D numbers alongside, and the figures."""

from __future__ import annotations

import math
from pathlib import Path

from lossfloor.core.errors import InputError
from lossfloor.core.files import atomic_write_text
from lossfloor.studies.common import (
    csv_text,
    fmt_pm,
    load_cells,
    load_floor,
    markdown_table,
    mean_se,
    paired_difference,
    text_table,
    write_json,
)
from lossfloor.studies.losses.design import IMAGE_DATASETS, LOSS_TARGETS, LOSS_WEIGHTS, POINT_DATASETS

SEED_2D_TABLE = {  # the seed paper's 2-D table (NELBO column: its clipped training loss, not a bound)
    ("clusters", "x0"): (0.6777, 0.1754, 0.5746, 0.4754, 0.4300, 0.2715),
    ("clusters", "eps"): (2.3636, 0.0364, 0.0706, 0.3522, 0.0634, 0.1430),
    ("clusters", "v"): (2.5396, 0.0307, 0.0409, 0.8264, 0.0389, 0.0363),
    ("clusters", "score"): (0.7657, 0.2279, 0.1498, 2.6934, 0.2688, 0.1633),
    ("ring", "x0"): (0.8785, 0.2744, 0.3807, 0.4932, 0.2807, 0.3974),
    ("ring", "eps"): (2.5700, 0.0914, 0.1107, 0.4266, 0.0983, 0.0366),
    ("ring", "v"): (2.5452, 0.0459, 0.0718, 0.9227, 0.0453, 0.0088),
    ("ring", "score"): (0.9577, 0.2254, 0.1563, 3.0981, 0.2220, 0.1637),
    ("swiss-roll", "x0"): (0.8640, 0.1133, 0.2645, 0.4934, 0.5256, 0.6875),
    ("swiss-roll", "eps"): (2.5324, 0.0689, 0.0941, 0.4261, 0.0857, 0.0824),
    ("swiss-roll", "v"): (2.4861, 0.0418, 0.0598, 0.9171, 0.0427, 0.0269),
    ("swiss-roll", "score"): (0.9493, 0.1266, 0.1972, 3.0274, 0.0893, 0.1227),
    ("waves", "x0"): (0.9104, 0.1593, 0.5559, 0.4939, 0.1869, 0.6911),
    ("waves", "eps"): (2.6805, 0.0405, 0.0757, 0.4500, 0.0748, 0.0778),
    ("waves", "v"): (2.6873, 0.0447, 0.0738, 0.9411, 0.0131, 0.0271),
    ("waves", "score"): (1.0210, 0.0353, 0.1369, 3.4165, 0.0178, 0.1676),
}




POINT_COLUMNS = (("nelbo_bpd", "NELBO bits/dim"), ("mean_distance", "mean dist."),
                 ("covariance_distance", "cov. dist."), ("sliced_wasserstein", "SW2"),
                 ("energy_distance", "energy dist."))
IMAGE_COLUMNS = (("nelbo_bpd", "NELBO bits/dim"), ("classifier_fd", "classifier FD"))
NATIVE_POINT_COLUMNS = (("native_mean_distance", "mean dist."), ("native_covariance_distance", "cov. dist."),
                        ("native_sliced_wasserstein", "SW2"), ("native_energy_distance", "energy dist."))
NATIVE_IMAGE_COLUMNS = (("native_classifier_fd", "classifier FD"),)
GAP_COLUMNS = (("rescaled_loss", "rescaled (x0 MSE) loss"), ("train_nelbo_diffusion", "train diffusion term"),
               ("floor_gap", "gap to floor"))


def _cell_values(cell: dict, floor: dict | None) -> dict:
    values = {"nelbo_bpd": cell["nelbo"]["bits_per_dim"], "rescaled_loss": cell["rescaled_loss"],
              "train_nelbo_diffusion": cell["train_nelbo_diffusion"], **cell["metrics"],
              **{f"native_{k}": v for k, v in cell["native_metrics"].items()}}
    if floor is not None:
        values["floor_gap"] = cell["train_nelbo_diffusion"] - floor["nelbo_diffusion"]
    return values


def aggregate(cells: list[dict], floors: dict) -> list[dict]:
    """One row per (dataset, target, loss): mean and standard error over seeds of every value."""
    groups: dict = {}
    for c in cells:
        groups.setdefault((c["dataset"], c["target"], c["loss"]), []).append(
            _cell_values(c, floors.get(c["dataset"])))
    rows = []
    for (d, t, w), vals in groups.items():
        row = {"dataset": d, "target": t, "loss": w, "seeds": len(vals)}
        for key in vals[0]:
            if not key.endswith("_se"):
                row[key], row[f"{key}_se"] = mean_se(x[key] for x in vals)
        rows.append(row)
    order = {name: i for i, name in enumerate(POINT_DATASETS + IMAGE_DATASETS + LOSS_TARGETS + LOSS_WEIGHTS)}
    return sorted(rows, key=lambda r: (order[r["dataset"]], order[r["target"]], order[r["loss"]]))


def _fmt(row: dict, key: str) -> str:
    return fmt_pm(row[key], row.get(f"{key}_se", math.nan)) if key in row else "–"


def _wide_rows(rows: list[dict], columns) -> list[list[str]]:
    """One line per (dataset, target): the columns of the NELBO-trained then the simple-trained model."""
    index = {(r["dataset"], r["target"], r["loss"]): r for r in rows}
    pairs = dict.fromkeys((r["dataset"], r["target"]) for r in rows)
    return [[d, t] + [_fmt(index[(d, t, w)], key) if (d, t, w) in index else "–" for w in LOSS_WEIGHTS
                      for key, _ in columns] for d, t in pairs]


def losses_table(rows: list[dict], columns, title: str) -> str:
    """A seed-paper-shaped table: one row per (dataset, target), NELBO-trained | simple-trained columns."""
    head = ["data", "target"] + [f"{label} ({w})" for w in LOSS_WEIGHTS for _, label in columns]
    return markdown_table(head, _wide_rows(rows, columns), title)


def seed_comparison_table(rows: list[dict]) -> str:
    """Our mean / covariance distances (seed samplers and shared sampler) next to the seed paper's."""
    head = ["data", "target", "loss", "paper mean", "ours mean (seed sampler)", "ours mean (Heun)",
            "paper cov.", "ours cov. (seed sampler)", "ours cov. (Heun)"]
    lines = []
    for r in rows:
        paper = SEED_2D_TABLE.get((r["dataset"], r["target"]))
        if paper is None:
            continue
        p_mean, p_cov = (paper[1], paper[2]) if r["loss"] == "nelbo" else (paper[4], paper[5])
        lines.append([r["dataset"], r["target"], r["loss"], f"{p_mean:.3f}", _fmt(r, "native_mean_distance"),
                      _fmt(r, "mean_distance"), f"{p_cov:.3f}", _fmt(r, "native_covariance_distance"),
                      _fmt(r, "covariance_distance")])
    title = "Against the seed paper's 2-D table (its numbers: one run average, no SE)"
    return markdown_table(head, lines, title)


PAIRED_COLUMNS = (("nelbo_bpd", "NELBO bits/dim"), ("sliced_wasserstein", "SW2"),
                  ("classifier_fd", "classifier FD"),
                  ("rescaled_loss", "rescaled loss"), ("floor_gap", "gap to floor"))


def paired_rows(cells: list[dict], floors: dict) -> list[dict]:
    """Per (dataset, target): NELBO-trained minus simple-trained, paired by seed (mean, SE, seeds)."""
    arms: dict = {}
    for c in cells:
        arms.setdefault((c["dataset"], c["target"]), {}).setdefault(c["loss"], {})[c["seed"]] = _cell_values(
            c, floors.get(c["dataset"]))
    rows = []
    for (d, t), by_loss in arms.items():
        if not set(LOSS_WEIGHTS) <= set(by_loss):
            continue
        nelbo, simple = by_loss["nelbo"], by_loss["simple"]
        row = {"dataset": d, "target": t}
        for key, _ in PAIRED_COLUMNS:
            if all(key in v for v in (*nelbo.values(), *simple.values())):
                mean, se, row["seeds"] = paired_difference({s: v[key] for s, v in nelbo.items()},
                                                           {s: v[key] for s, v in simple.items()})
                row[key], row[f"{key}_se"] = mean, se
        rows.append(row)
    order = {name: i for i, name in enumerate(POINT_DATASETS + IMAGE_DATASETS + LOSS_TARGETS)}
    return sorted(rows, key=lambda r: (order[r["dataset"]], order[r["target"]]))


def paired_table(rows: list[dict]) -> str:
    """The paired differences as markdown (columns a dataset lacks are left out)."""
    columns = [(k, label) for k, label in PAIRED_COLUMNS if any(k in r for r in rows)]
    head = ["data", "target", "seeds"] + [f"Δ {label}" for _, label in columns]
    lines = [[r["dataset"], r["target"], r.get("seeds", 0)] + [_fmt(r, k) for k, _ in columns] for r in rows]
    title = ("Paired differences, NELBO-trained minus simple-trained (same seed; mean ± SE over seeds; "
             "the 95% interval is ± t(seeds − 1) SE: ± 12.7 SE for 2 seeds, ± 4.3 SE for 3)")
    return markdown_table(head, lines, title)


def terminal_table(summary: dict) -> str:
    """The headline numbers for the terminal: NELBO and the main sample metric per (data, target, loss)."""
    head = ["data", "target", "loss", "seeds", "NELBO bits/dim", "sample metric", "gap to floor"]
    lines = []
    for r in summary["rows"]:
        metric = "classifier_fd" if "classifier_fd" in r else "sliced_wasserstein"
        name = "classifier FD" if metric == "classifier_fd" else "SW2"
        lines.append([r["dataset"], r["target"], r["loss"], r["seeds"], _fmt(r, "nelbo_bpd"),
                      f"{name} {_fmt(r, metric)}", _fmt(r, "floor_gap")])
    return text_table(head, lines)


def write_losses_report(out) -> dict:
    """Aggregate the finished cells into table.md, table.csv, summary.json and the figures."""
    from lossfloor.plots.studies import plot_losses

    out = Path(out)
    cells = load_cells(out, "*/cells/*.json")
    if not cells:
        raise InputError(f"{out}: no finished cells to report")
    floors = {p.parent.name: load_floor(p)[1] for p in out.glob("*/floor.json")}
    rows = aggregate(cells, floors)
    seeds = sorted({c["seed"] for c in cells})
    presets = sorted({c["preset"] for c in cells})
    note = (f"Preset(s): {', '.join(presets)}; seeds {seeds}; each cell: mean ± standard error over seeds. "
            "NELBO: one continuous-time VDM estimator for every model (bits/dim; 2-D: continuous density "
            "bound; images: dequantised). Metrics against a held-out test set. Classifier FD is not the "
            "Inception FID.\n\n")
    points = [r for r in rows if r["dataset"] in POINT_DATASETS]
    images = [r for r in rows if r["dataset"] in IMAGE_DATASETS]
    text = "## Loss-function comparison\n\n" + note
    if points:
        text += losses_table(points, POINT_COLUMNS, "2-D data: likelihood and sample metrics (shared Heun "
                                                    "sampler)") + "\n"
        text += losses_table(points, NATIVE_POINT_COLUMNS, "2-D data: the seed's own samplers") + "\n"
        text += seed_comparison_table(points) + "\n"
    if images:
        text += losses_table(images, IMAGE_COLUMNS, "Images: likelihood and classifier Fréchet distance "
                                                    "(shared Heun sampler)") + "\n"
        text += losses_table(images, NATIVE_IMAGE_COLUMNS, "Images: the seed's per-target samplers") + "\n"
    paired = paired_rows(cells, floors)
    if paired:
        text += paired_table(paired) + "\n"
    text += losses_table(rows, GAP_COLUMNS, "x0-space losses and the distance to the optimal-loss floor "
                                            "(nats/dim)") + "\n"
    atomic_write_text(out / "table.md", text)
    keys = sorted({k for r in rows for k in r} - {"dataset", "target", "loss", "seeds"})
    atomic_write_text(out / "table.csv", csv_text(rows, ["dataset", "target", "loss", "seeds", *keys]))
    summary = {"rows": rows, "paired_nelbo_minus_simple": paired,
               "floors": {d: {k: f[k] for k in ("nelbo_diffusion", "nelbo_diffusion_se")}
                          for d, f in floors.items()},
               "seeds": seeds, "presets": presets, "cells": len(cells)}
    write_json(out / "summary.json", summary)
    plot_losses(out, cells, {d: f.get("curve", f) for d, f in floors.items()}, LOSS_TARGETS, LOSS_WEIGHTS)
    return summary
