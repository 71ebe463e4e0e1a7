"""The scaling study's report: fits of the finished cells, tables and figures (`write_scaling_report`).

`lossfloor.studies.scaling` trains and evaluates the cells; this module reads them back, fits the three
forms of `lossfloor.evaluate.scaling` on the compute-optimal frontier, per model size, per sigma and on
held-out data, and writes scaling.json, table.md, points.csv, levels.csv and the three figures.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lossfloor.core.files import atomic_write_text
from lossfloor.core.schema import read_json
from lossfloor.evaluate import frontier, scaling
from lossfloor.objective.objective import Objective, get_objective
from lossfloor.studies.common import csv_text, load_cells, markdown_table, mean_se, text_table, write_json


def _points(cells: list[dict], setup: dict) -> tuple[dict, dict]:
    """(per-cell arrays, per-(width, step) means over the runs) of compute, total and per-level losses and
    gaps; cells sorted by (width, step, run) so the means follow `frontier.Curves` order."""
    cells = sorted(cells, key=lambda c: (c["width"], c["step"], c.get("run", 0)))
    floor = setup["same_draw_floor"]
    cell = {
        "width": np.array([c["width"] for c in cells]), "step": np.array([c["step"] for c in cells]),
        "run": np.array([c.get("run", 0) for c in cells]),
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
    }
    keys = sorted({(w, s) for w, s in zip(cell["width"].tolist(), cell["step"].tolist(), strict=True)})
    sel = [(cell["width"] == w) & (cell["step"] == s) for w, s in keys]
    mean = {k: np.array([v[m].mean(0) for m in sel]) for k, v in cell.items() if k != "run"}
    mean["width"] = np.array([w for w, _ in keys])
    mean["step"] = np.array([s for _, s in keys])
    mean["runs"] = np.array([int(m.sum()) for m in sel])
    for arrays in (cell, mean):
        arrays["floor_total"] = floor["total"][0]
        arrays["floor_levels"] = np.array([v[0] for v in floor["levels"]])
    return cell, mean


def _study(cell: dict, loss, floor: float, n_boot: int, seed: int, forms=scaling.FORMS):
    curves = frontier.Curves.from_points(cell["compute"], loss, cell["width"], cell["run"])
    return frontier.frontier_study(curves, floor, n_boot=n_boot, seed=seed, forms=forms)


def _per_size(cell: dict, mean: dict, floor: float) -> dict:
    """Per width: J/J* at the last checkpoint (mean and SE over runs), the gap's change over the last
    step interval (a plateau has ~0) and the point fits of the mean curve."""
    out = {}
    last = cell["step"].max()
    for w in sorted(set(cell["width"].tolist())):
        at_last = (cell["width"] == w) & (cell["step"] == last)
        ratio = mean_se((floor + cell["train_gap"][at_last]) / floor)
        m = np.nonzero(mean["width"] == w)[0]
        steps, gap = mean["step"][m], mean["train_gap"][m]
        change = float(np.log(gap[-1] / gap[-2]) / np.log(steps[-1] / steps[-2])) if len(m) > 1 else \
            math.nan
        fits = {f: frontier.fit_point(f, mean["compute"][m], floor + gap, floor)
                for f in ("plain", "corrected")}
        out[str(w)] = {"parameters": int(mean["parameters"][m][0]), "runs": int(mean["runs"][m][0]),
                       "j_over_jstar_last": ratio, "gap_last": float(gap[-1]),
                       "last_log_slope": change, "fits": fits}
    return out


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
    cell, p = _points(cells, setup)
    sigmas = np.asarray(setup.get("sigmas", setup["optimal_loss"]["sigma"]))
    seed, n_boot = setup["seed"], preset["n_boot"]
    floor = p["floor_total"]
    # J (Rao-Blackwellised on the evaluation draws) = same-draw J* + the non-negative paired gap.
    j_cell, j_train = floor + cell["train_gap"], floor + p["train_gap"]

    report = {"setup": {k: setup.get(k) for k in ("preset_name", "preset", "seed", "objective", "sizes",
                                                   "flop_convention", "curve_total", "same_draw_floor",
                                                   "eval_draws", "test_draws", "sigma_star")}}
    main = _study(cell, j_cell, floor, n_boot, seed)
    summary = main.summary()
    report["frontier"] = {"points": main.points.tolist(), "fits": summary, "floor": floor}
    report["per_size"] = _per_size(cell, p, floor)
    largest = report["per_size"][str(max(cell["width"]))]
    report["endpoints"] = {
        "delta_rho": summary["corrected_minus_plain"]["rho"],
        "extrapolation_error": {f: {"value": summary[f]["extrapolation_error"],
                                    "ci": summary[f]["extrapolation_error_ci"]} for f in scaling.FORMS},
        "extrapolation_corrected_minus_plain": summary["corrected_minus_plain"]["extrapolation_error"],
        "extrapolation_free_minus_plain": summary["free_minus_plain"]["extrapolation_error"],
        "free_floor_minus_jstar": summary["free_floor_minus_jstar"],
        "largest_model_j_over_jstar": largest["j_over_jstar_last"],
        "units": summary["plain"]["units"], "strata": summary["plain"]["strata"]}
    per_sigma = []
    for k, s in enumerate(sigmas):
        level = _study(cell, p["floor_levels"][k] + cell["level_gaps"][:, k], float(p["floor_levels"][k]),
                       min(n_boot, 200), seed)
        row = {"sigma": float(s), "floor": float(p["floor_levels"][k]), "frontier_points": len(level.points)}
        row.update(level.summary())
        per_sigma.append(row)
    report["per_sigma"] = per_sigma
    # Held out: the training-set J* is not a floor there; fit with it anyway and see.
    value = setup["same_draw_floor"]["total"][0]
    held = _study(cell, cell["test"], value, n_boot, seed)
    report["held_out"] = {"points": held.points.tolist(), "floor": value, "fits": held.summary(),
                          "below_floor_points": int(np.sum(p["test"] <= value))}
    write_json(out / "scaling.json", report)

    on_frontier = set(main.points.tolist())
    rows = []
    for i in range(len(p["compute"])):
        rows.append({"width": int(p["width"][i]), "parameters": int(p["parameters"][i]),
                     "step": int(p["step"][i]), "runs": int(p["runs"][i]),
                     "compute_flops": f"{p['compute'][i]:.6e}", "train_loss": f"{j_train[i]:.6g}",
                     "train_loss_raw": f"{p['train_raw'][i]:.6g}",
                     "train_gap": f"{p['train_gap'][i]:.6g}", "train_gap_se": f"{p['train_gap_se'][i]:.3g}",
                     "train_floor_same_draws": f"{floor:.6g}", "test_loss": f"{p['test'][i]:.6g}",
                     "on_frontier": int(i in on_frontier)})
    atomic_write_text(out / "points.csv", csv_text(rows, list(rows[0])))
    # Every cell in `lossfloor fit`'s format (size = width, run = seed): `lossfloor fit runs.csv --floor J*`
    # refits the frontier endpoints with the same resamples.
    run_rows = [{"size": int(cell["width"][i]), "run": int(cell["run"][i]), "step": int(cell["step"][i]),
                 "compute": repr(float(cell["compute"][i])), "loss": repr(float(j_cell[i])),
                 "test_loss": repr(float(cell["test"][i]))} for i in range(len(cell["compute"]))]
    atomic_write_text(out / "runs.csv", csv_text(run_rows, list(run_rows[0])))
    level_rows = []
    for i in range(len(cell["compute"])):
        for k, s in enumerate(sigmas):
            level_rows.append({"width": int(cell["width"][i]), "run": int(cell["run"][i]),
                               "step": int(cell["step"][i]), "sigma": f"{s:.6g}",
                               "train_x0_loss": f"{cell['levels'][i, k]:.6g}",
                               "train_gap": f"{cell['level_gaps'][i, k]:.6g}",
                               "floor_same_draws": f"{p['floor_levels'][k]:.6g}",
                               "test_x0_loss": f"{cell['test_levels'][i, k]:.6g}"})
    atomic_write_text(out / "levels.csv", csv_text(level_rows, list(level_rows[0])))
    atomic_write_text(out / "table.md", scaling_tables(report))
    plot_scaling_total(p, j_train, report, out / "scaling_total.png")
    variance = setup["optimal_loss"]["data_variance"]
    plot_scaling_sigma(p, sigmas, report, out / "scaling_sigma.png", variance)
    objective = Objective.from_dict(setup["objective_definition"]) if "objective_definition" in setup else \
        get_objective(setup["objective"])
    plot_scaling_rho(report, out / "rho_by_sigma.png", objective)
    return report


def _pm(d: dict, digits: int = 4) -> str:
    return f"{d['value']:+.{digits}f} [{d['ci'][0]:+.{digits}f}, {d['ci'][1]:+.{digits}f}]"


def endpoint_rows(report: dict) -> list[list[str]]:
    """The pre-declared endpoints (docs/scaling.md) as table rows."""
    e = report["endpoints"]
    d = e["delta_rho"]
    rows = [["Δρ = ρ(corrected) − ρ(plain)", _pm(d), f"{d['detectable']:.4f}"]]
    for form in scaling.FORMS:
        x = e["extrapolation_error"][form]
        rows.append([f"top-third extrapolation error, {form}",
                     f"{x['value']:.4f} [{x['ci'][0]:.4f}, {x['ci'][1]:.4f}]", ""])
    for name, key in (("corrected − plain", "extrapolation_corrected_minus_plain"),
                      ("free − plain", "extrapolation_free_minus_plain")):
        rows.append([f"extrapolation error, {name}", _pm(e[key]), f"{e[key]['detectable']:.4f}"])
    f = e["free_floor_minus_jstar"]
    rows.append([f"free floor E − J* (J* = {f['jstar']:.4g})", _pm(f), ""])
    r = e["largest_model_j_over_jstar"]
    rows.append(["largest model's J / J* at its last checkpoint", f"{r[0]:.3f} ± {r[1]:.3f} (SE)", ""])
    return rows


def scaling_tables(report: dict) -> str:
    """The markdown tables: the endpoints, forms on the frontier (train and held out), per size, per sigma."""
    fits = report["frontier"]["fits"]
    e = report["endpoints"]
    parts = [markdown_table(["endpoint", "value [95% CI]", "detectable (80% power)"], endpoint_rows(report),
                            f"Pre-declared endpoints (frontier of seed-mean curves; {e['units']} runs in "
                            f"{e['strata']} sizes resampled within sizes, frontier re-chosen per resample)"),
             markdown_table(scaling.FORM_HEAD, scaling.form_rows(fits),
                            "Band loss on the compute-optimal frontier (training data)"),
             "Frontier sizes (point estimate): " + ", ".join(map(str, fits["frontier_sizes"])) +
             "; share of resamples whose frontier has each size: " +
             ", ".join(f"{w}: {v:.2f}" for w, v in fits["frontier_share"].items()) + "\n"]
    size_rows = []
    for w, r in report["per_size"].items():
        ratio = r["j_over_jstar_last"]
        size_rows.append([w, str(r["parameters"]), str(r["runs"]), f"{ratio[0]:.3f} ± {ratio[1]:.3f}",
                          f"{r['gap_last']:.4g}", f"{r['last_log_slope']:+.3f}",
                          f"{r['fits']['plain']['rho']:.4f}", f"{r['fits']['corrected']['rho']:.4f}"])
    parts.append(markdown_table(["width", "parameters", "runs", "J/J* at last step (± SE)", "J − J* at last",
                                 "d log(J − J*) / d log step, last interval", "ρ plain", "ρ corrected"],
                                size_rows, "Per model size (mean curve over its runs)"))
    parts.append(markdown_table(scaling.FORM_HEAD, scaling.form_rows(report["held_out"]["fits"]),
                                "Band loss on held-out data (the training set's J* subtracted; not a floor)"))
    sig_rows = []
    for r in report["per_sigma"]:
        if "plain" not in r:
            continue
        free = r["free"]
        sig_rows.append([f"{r['sigma']:.3g}", f"{r['floor']:.4g}", f"{r['plain']['rho']:.4f}",
                         f"{r['corrected']['rho']:.4f}", _pm(r["corrected_minus_plain"]["rho"]),
                         f"{free['floor']:.4g} [{free['floor_ci'][0]:.3g}, {free['floor_ci'][1]:.3g}]",
                         f"{r['plain']['extrapolation_error']:.4f}",
                         f"{r['corrected']['extrapolation_error']:.4f}",
                         f"{free['extrapolation_error']:.4f}"])
    parts.append(markdown_table(["σ", "J*(σ)", "ρ plain", "ρ corrected", "Δρ [95% CI]", "free E [95% CI]",
                                 "extrap. plain", "extrap. corrected", "extrap. free"], sig_rows,
                                "Per noise level in the band, x0 loss on the frontier"))
    return "\n".join(parts)


def scaling_terminal_table(report: dict) -> str:
    """The endpoints, the frontier fits and the per-sigma rho comparison as plain text for the terminal (or
    how many cells are finished when the report waits for the rest)."""
    if "finished" in report:
        return (f"{report['finished']} of {report['cells']} cells finished; the report is written when all "
                "are (rerun without --widths)")
    lines = ["pre-declared endpoints:", text_table(["endpoint", "value [95% CI]", "detectable"],
                                                   endpoint_rows(report)),
             "band loss on the compute-optimal frontier (training data):",
             text_table(scaling.FORM_HEAD, scaling.form_rows(report["frontier"]["fits"]))]
    rows = [[f"{r['sigma']:.3g}", f"{r['plain']['rho']:.4f}", f"{r['corrected']['rho']:.4f}",
             "{value:+.4f} [{0:+.4f}, {1:+.4f}]".format(*r["corrected_minus_plain"]["rho"]["ci"],
                                                       value=r["corrected_minus_plain"]["rho"]["value"])]
            for r in report["per_sigma"] if "plain" in r]
    lines += ["rho per noise level (frontier):",
              text_table(["σ", "ρ plain", "ρ corrected", "Δρ [95% CI]"], rows)]
    return "\n".join(lines)
