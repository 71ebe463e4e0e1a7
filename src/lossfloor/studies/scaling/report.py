"""The scaling study's report: fits of the finished cells, tables and figures (`write_scaling_report`).

`lossfloor.studies.scaling` trains and evaluates the cells; this module reads them back, fits the three
forms of `lossfloor.evaluate.scaling` on the compute-optimal frontier, per model size, per sigma and on
held-out data, and writes scaling.json, table.md, points.csv, levels.csv and the three figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lossfloor.core.files import atomic_write_text
from lossfloor.core.schema import read_json
from lossfloor.evaluate import scaling
from lossfloor.objective.objective import get_objective
from lossfloor.studies.common import csv_text, load_cells, markdown_table, text_table, write_json


def _points(cells: list[dict], setup: dict) -> dict:
    """Arrays over all (width, step) cells: compute, run label, total and per-level losses and floors."""
    cells = sorted(cells, key=lambda c: (c["width"], c["step"]))
    floor = setup["same_draw_floor"]
    return {
        "width": np.array([c["width"] for c in cells]), "step": np.array([c["step"] for c in cells]),
        "parameters": np.array([c["parameters"] for c in cells]),
        "compute": np.array([c["compute"] for c in cells], dtype=float),
        "train": np.array([c["train"]["total"][0] for c in cells]),
        "train_raw": np.array([c["train"]["total_raw"][0] for c in cells]),
        "train_gap": np.array([c["train"]["total_gap"][0] for c in cells]),
        "train_gap_se": np.array([c["train"]["total_gap"][1] for c in cells]),
        "test": np.array([c["test"]["total"][0] for c in cells]),
        "levels": np.array([[v[0] for v in c["train"]["levels"]] for c in cells]),
        "level_gaps": np.array([[v[0] for v in c["train"]["level_gaps"]] for c in cells]),
        "test_levels": np.array([[v[0] for v in c["test"]["levels"]] for c in cells]),
        "floor_total": floor["total"][0], "floor_levels": np.array([v[0] for v in floor["levels"]]),
    }


def write_scaling_report(out) -> dict:
    """Fits, tables, CSVs and figures from the finished cells under `out`."""

    from lossfloor.plots.scaling import (  # matplotlib only when drawing
        plot_scaling_rho,
        plot_scaling_sigma,
        plot_scaling_total,
    )

    out = Path(out)
    setup = read_json(out / "setup.json", "scaling study setup")
    preset = setup["preset"]
    cells = load_cells(out / "cells", "*.json")
    p = _points(cells, setup)
    sigmas = np.asarray(setup["optimal_loss"]["sigma"])
    curve_floor = np.asarray(setup["optimal_loss"]["loss"])
    curve_se = np.asarray(setup["optimal_loss"]["stderr"])
    seed, n_boot = setup["seed"], preset["n_boot"]
    floor = p["floor_total"]
    # J (Rao-Blackwellised on the evaluation draws) = same-draw J* + the non-negative paired gap.
    j_train = floor + p["train_gap"]

    report = {"setup": {k: setup[k] for k in ("preset_name", "preset", "seed", "objective", "sizes",
                                               "flop_convention", "curve_total", "same_draw_floor",
                                               "eval_draws", "test_draws")}}
    idx, fits = scaling.frontier_fits(p["compute"], j_train, floor, p["width"], n_boot, seed)
    report["frontier"] = {"points": idx.tolist(), "fits": scaling.fit_summary(fits),
                          "floor": floor, "free_E_minus_floor": fits["free"].floor - floor if fits else None}
    report["per_size"] = {}
    for w in sorted(set(p["width"].tolist())):
        sel = np.nonzero(p["width"] == w)[0]
        fits_w = scaling.fit_all(p["compute"][sel], j_train[sel], floor, n_boot=n_boot, seed=seed)
        report["per_size"][str(w)] = scaling.fit_summary(fits_w)
    per_sigma = []
    for k, s in enumerate(sigmas):
        j_k = p["floor_levels"][k] + p["level_gaps"][:, k]
        idx_k, fits_k = scaling.frontier_fits(p["compute"], j_k, p["floor_levels"][k], p["width"], n_boot,
                                              seed)
        row = {"sigma": float(s), "floor": float(p["floor_levels"][k]), "curve_floor": float(curve_floor[k]),
               "curve_floor_se": float(curve_se[k]), "frontier_points": len(idx_k)}
        if fits_k:
            row.update(scaling.fit_summary(fits_k))
        per_sigma.append(row)
    report["per_sigma"] = per_sigma
    # Held out: the training-set J* is not a floor there; fit with it anyway and see.  J*_train is the
    # same-draw estimate (its SE propagated), not the curve's interpolated total.
    value, se = setup["same_draw_floor"]["total"]
    tot = {"value": value, "stderr": se}
    idx_t, fits_t = scaling.frontier_fits(p["compute"], p["test"], value, p["width"], n_boot, seed,
                                          floor_stderr=se)
    report["held_out"] = {"points": idx_t.tolist(), "floor": tot["value"],
                          "fits": scaling.fit_summary(fits_t),
                          "below_floor_points": int(np.sum(p["test"] <= tot["value"]))}
    write_json(out / "scaling.json", report)

    rows = []
    for i in range(len(p["compute"])):
        rows.append({"width": int(p["width"][i]), "parameters": int(p["parameters"][i]),
                     "step": int(p["step"][i]),
                     "compute_flops": f"{p['compute'][i]:.6e}", "train_loss": f"{p['train'][i]:.6g}",
                     "train_loss_raw": f"{p['train_raw'][i]:.6g}",
                     "train_gap": f"{p['train_gap'][i]:.6g}", "train_gap_se": f"{p['train_gap_se'][i]:.3g}",
                     "train_floor_same_draws": f"{floor:.6g}", "test_loss": f"{p['test'][i]:.6g}",
                     "on_frontier": int(i in set(idx.tolist()))})
    atomic_write_text(out / "points.csv", csv_text(rows, list(rows[0])))
    level_rows = []
    for i in range(len(p["compute"])):
        for k, s in enumerate(sigmas):
            level_rows.append({"width": int(p["width"][i]), "step": int(p["step"][i]), "sigma": f"{s:.6g}",
                               "train_x0_loss": f"{p['levels'][i, k]:.6g}",
                               "train_gap": f"{p['level_gaps'][i, k]:.6g}",
                               "floor_same_draws": f"{p['floor_levels'][k]:.6g}",
                               "curve_floor": f"{curve_floor[k]:.6g}",
                               "test_x0_loss": f"{p['test_levels'][i, k]:.6g}"})
    atomic_write_text(out / "levels.csv", csv_text(level_rows, list(level_rows[0])))
    atomic_write_text(out / "table.md", scaling_tables(report))
    plot_scaling_total(p, j_train, report, out / "scaling_total.png")
    variance = setup["optimal_loss"]["data_variance"]
    plot_scaling_sigma(p, sigmas, report, out / "scaling_sigma.png", variance)
    plot_scaling_rho(report, out / "rho_by_sigma.png", get_objective(setup["objective"]))
    return report


def scaling_tables(report: dict) -> str:
    """The markdown tables: forms on the frontier (train and held out), per size, per sigma."""
    parts = [markdown_table(scaling.FORM_HEAD, scaling.form_rows(report["frontier"]["fits"]),
                            "Total EDM loss, compute-optimal frontier (training data)")]
    diff = report["frontier"]["fits"].get("corrected_minus_plain")
    if diff:
        d = diff["rho"]
        parts.append(f"ρ(corrected) − ρ(plain) = {d['value']:+.4f}, paired 95% CI "
                     f"[{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]\n")
    parts.append(markdown_table(scaling.FORM_HEAD, scaling.form_rows(report["held_out"]["fits"]),
                                "Total EDM loss on held-out data (J* of the training set subtracted)"))
    size_rows = []
    for w, fits in report["per_size"].items():
        for row in scaling.form_rows(fits):
            size_rows.append([w] + row)
    parts.append(markdown_table(["width"] + scaling.FORM_HEAD, size_rows,
                                "Per model size (checkpoints of one run)"))
    sig_rows = []
    for r in report["per_sigma"]:
        if "plain" not in r:
            continue
        d = r["corrected_minus_plain"]["rho"]
        free = r["free"]
        sig_rows.append([f"{r['sigma']:.3g}", f"{r['floor']:.4g}", f"{r['plain']['rho']:.4f}",
                         f"{r['corrected']['rho']:.4f}",
                         f"{d['value']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]",
                         f"{free['floor']:.4g} [{free['floor_ci'][0]:.3g}, {free['floor_ci'][1]:.3g}]",
                         f"{r['plain']['extrapolation_error']:.4f}",
                         f"{r['corrected']['extrapolation_error']:.4f}"])
    parts.append(markdown_table(["σ", "J*(σ)", "ρ plain", "ρ corrected", "Δρ [95% CI]", "free E [95% CI]",
                                 "extrap. plain", "extrap. corrected"], sig_rows,
                                "Per noise level, x0 loss on the frontier"))
    return "\n".join(parts)


def scaling_terminal_table(report: dict) -> str:
    """The frontier fits and the per-sigma rho comparison as plain text for the terminal."""

    lines = ["total EDM loss on the compute-optimal frontier (training data):",
             text_table(scaling.FORM_HEAD, scaling.form_rows(report["frontier"]["fits"]))]
    rows = [[f"{r['sigma']:.3g}", f"{r['plain']['rho']:.4f}", f"{r['corrected']['rho']:.4f}",
             "{value:+.4f} [{0:+.4f}, {1:+.4f}]".format(*r["corrected_minus_plain"]["rho"]["ci"],
                                                       value=r["corrected_minus_plain"]["rho"]["value"])]
            for r in report["per_sigma"] if "plain" in r]
    lines += ["rho per noise level (frontier):",
              text_table(["σ", "ρ plain", "ρ corrected", "Δρ [95% CI]"], rows)]
    return "\n".join(lines)
