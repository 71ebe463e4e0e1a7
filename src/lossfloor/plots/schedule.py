"""Figures of the schedule study: the adaptive density over training, per-sigma gaps, samples."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from lossfloor.plots.common import save_figure, show_samples

# -- figures -----------------------------------------------------------------------------------------


def plot_density_history(results: list[dict], curve, path) -> None:
    """How the adaptive p(log sigma) moves during training (seed 0), against J*(sigma)."""


    cells = [r for r in results
             if r["schedule"] == "optimal-loss" and r["seed"] == 0 and r["density_history"]]
    if not cells:
        return
    fig, axes = plt.subplots(1, len(cells), figsize=(6.5 * len(cells), 4), squeeze=False,
                             layout="constrained")
    for ax, r in zip(axes[0], cells, strict=True):
        h = r["density_history"]
        edges = np.exp(h["edges_log_sigma"])
        cmap = plt.get_cmap("viridis")
        n = len(h["density"])
        for i, dens in enumerate(h["density"]):
            ax.stairs(dens, edges, color=cmap(i / max(n - 1, 1)), lw=1.2,
                      label=f"step {i * h['every']}" if i in (0, n - 1) else None)
        ax.set(xscale="log", xlabel="σ", ylabel="p(log σ)", title=f"{r['objective']}: adaptive density")
        twin = ax.twinx()
        s = np.geomspace(edges[0], edges[-1], 200)
        twin.plot(s, curve(s) / curve.data_variance, "k--", lw=1, label="J*(σ) / data variance")
        twin.axvline(curve.critical_sigma(), color="gray", lw=0.8, ls=":")
        twin.set(ylim=(0, 1.05), ylabel="J*(σ) / data variance")
        lines = ax.get_legend_handles_labels()
        tl = twin.get_legend_handles_labels()
        ax.legend(lines[0] + tl[0], lines[1] + tl[1], fontsize=8, loc="upper left")
    save_figure(fig, path)


def plot_gaps(results: list[dict], curve, path) -> None:
    """Per-sigma gap J(theta) - J* (mean over seeds) for every schedule, one panel per objective."""


    objectives = list(dict.fromkeys(r["objective"] for r in results))
    fig, axes = plt.subplots(1, len(objectives), figsize=(6 * len(objectives), 4), squeeze=False)
    for ax, o in zip(axes[0], objectives, strict=True):
        for schedule in dict.fromkeys(r["schedule"] for r in results if r["objective"] == o):
            gaps = np.array([r["gap"] for r in results if r["objective"] == o and r["schedule"] == schedule])
            ax.plot(curve.sigma, gaps.mean(0), label=schedule, lw=2 if schedule in ("native", "optimal-loss")
                    else 1, ls="-" if schedule in ("native", "optimal-loss") else "--")
        ax.axvline(curve.critical_sigma(), color="gray", lw=0.8, ls=":")
        ax.set(xscale="log", yscale="symlog", xlabel="σ", ylabel="x0 loss − J* per dim (train)",
               title=f"{o}: per-σ gap (mean over seeds)")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_schedule_samples(results: list[dict], path) -> None:
    """64 samples (seed 0) per (objective, schedule), same sampler and noise."""


    cells = [r for r in results if r["seed"] == 0]
    objectives = list(dict.fromkeys(r["objective"] for r in cells))
    cols = max(sum(1 for r in cells if r["objective"] == o) for o in objectives)
    fig, axes = plt.subplots(len(objectives), cols, figsize=(2.2 * cols, 2.5 * len(objectives)),
                             squeeze=False)
    for i, o in enumerate(objectives):
        row = [r for r in cells if r["objective"] == o]
        for j in range(cols):
            ax = axes[i][j]
            if j >= len(row):
                ax.axis("off")
                continue
            show_samples(ax, np.asarray(row[j]["samples"]))
            ax.set_title(f"{o}\n{row[j]['schedule']}\nFD {row[j]['fd']:.2f}", fontsize=7)
    save_figure(fig, path)
