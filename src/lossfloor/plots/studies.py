"""Figures of the loss-function and diagnose studies: floors and losses per target, sample tables, gaps."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.objective.objective import get_objective
from lossfloor.plots.common import (
    gap_linthresh,
    mark_critical_sigma,
    plot_above,
    save_figure,
    show_samples,
    symlog_decade_ticks,
)

# -- the losses study -------------------------------------------------------------------------------


def plot_losses(out, cells: list[dict], floor_curves: dict, targets, weights) -> None:
    """Per dataset: x0 loss vs t against the floor (loss_vs_t.png) and the samples of each (target, loss)
    through the shared sampler (samples.png) and the seed's own samplers (native_samples.png)."""
    from pathlib import Path


    out = Path(out)
    cosine = get_objective("cosine").process
    for d in sorted({c["dataset"] for c in cells}):
        mine = [c for c in cells if c["dataset"] == d]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        lowest = min(min(c["x0_error_curve"]["loss"]) for c in mine)
        for ax, w in zip(axes, weights, strict=True):
            for t in targets:
                runs = [c for c in mine if c["target"] == t and c["loss"] == w]
                if not runs:
                    continue
                sig = np.array(runs[0]["x0_error_curve"]["sigma"])
                loss = np.mean([r["x0_error_curve"]["loss"] for r in runs], 0)
                ax.plot(cosine.t_of_sigma(torch.tensor(sig)).numpy(), loss, marker=".", label=t)
            # J* of a small training set collapses far below any model: keep the models readable
            ax.set(yscale="log", ylim=(lowest / 10, None), xlabel="t  (cosine: sigma = tan(pi t / 2))",
                   title=f"{d}: {w}-trained")
            if d in floor_curves:
                fc = OptimalLossCurve.from_dict(floor_curves[d])
                plot_above(ax, cosine.t_of_sigma(torch.tensor(fc.sigma)).numpy(), fc.loss, lowest / 10, "--",
                           "J* (train set)", color="k")
            ax.legend(fontsize=8)
        axes[0].set_ylabel("test x0 MSE per dim")
        save_figure(fig, out / d / "loss_vs_t.png")
        for key, sampler, name in (("samples", "the shared Heun sampler", "samples.png"),
                                   ("native_samples", "the seed's own samplers", "native_samples.png")):
            plot_sample_table(out / d / name, d, mine, key, sampler, targets, weights)


def plot_sample_table(path, dataset: str, cells: list[dict], key: str, sampler: str, targets,
                      weights) -> None:
    """One panel per (loss, target) of the first seed's samples stored under `key` in each cell."""
    seed = min(x["seed"] for x in cells)
    seed0 = {(c["target"], c["loss"]): c for c in cells if c["seed"] == seed}
    targets = [t for t in targets if any(k[0] == t for k in seed0)]
    fig, axes = plt.subplots(len(weights), len(targets), figsize=(2.6 * len(targets), 5.4), squeeze=False)
    for i, w in enumerate(weights):
        for j, t in enumerate(targets):
            ax = axes[i, j]
            c = seed0.get((t, w))
            if c is None:
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            show_samples(ax, np.asarray(c[key]))
            ax.set_title(f"{t}, {w}", fontsize=9)
    fig.suptitle(f"{dataset}: samples of {sampler} (seed {seed})")
    save_figure(fig, path)


# -- the diagnosis study ----------------------------------------------------------------------------


def plot_diagnose_study(report: dict, path) -> None:
    """Per dataset: model losses and J* (top), per-sigma gaps of all variants (bottom); test dashed."""
    names = list(report["datasets"])
    fig, axes = plt.subplots(2, len(names), figsize=(6.5 * len(names), 7.5), squeeze=False, sharex=True,
                             gridspec_kw={"height_ratios": [2, 3]})
    for j, name in enumerate(names):
        d = report["datasets"][name]
        top, bottom = axes[0, j], axes[1, j]
        opt = d["optimal_loss"]
        plot_above(top, opt["sigma"], opt["loss"], 1e-5, "-", "J*(σ), the optimal loss", color="k", lw=2.2)
        for i, r in enumerate(d["variants"]):
            color = f"C{i}"
            label = f"{r['variant']} ({r['target']}-prediction)"
            for split, style in (("train", "-"), ("test", "--")):
                gaps = r[split] or []
                sig = [g["sigma"] for g in gaps]
                if split == "train":
                    top.plot(sig, [g["model_loss"] for g in gaps], style, color=color, lw=1.2, label=label)
                gap = np.array([g["gap"] for g in gaps])
                se = np.array([g["gap_stderr"] for g in gaps])
                bottom.plot(sig, gap, style + "o", color=color, ms=3, lw=1.3,
                            label=f"{label}, {split}" if split == "train" else f"{r['variant']}, test")
                if split == "train":
                    bottom.fill_between(sig, gap - 2 * se, gap + 2 * se, color=color, alpha=0.2, lw=0)
        top.set_xscale("log")
        top.set_yscale("log")
        top.set_ylim(bottom=1e-5)
        mark_critical_sigma(top, opt.get("critical_sigma", math.nan))
        mark_critical_sigma(bottom, opt.get("critical_sigma", math.nan), label=False)
        top.set_ylabel("per-dimension x0 MSE (log)")
        top.set_title(f"{name} (N = {d['data']['n']}): {d['budget']['model']} width {d['budget']['width']}, "
                      f"{d['budget']['steps']} steps × batch {d['budget']['batch_size']}", fontsize=10)
        top.legend(fontsize=7, loc="upper left")
        bottom.axhline(0, color="k", lw=0.8)
        train = [g for r in d["variants"] for g in r["train"]]
        linthresh = gap_linthresh([g["gap"] for g in train], [g["gap_stderr"] for g in train])
        bottom.set_yscale("symlog", linthresh=linthresh)
        every = train + [g for r in d["variants"] for g in r["test"] or []]
        lowest = min([g["gap"] - 2 * g["gap_stderr"] for g in train] + [g["gap"] for g in every] + [0.0])
        bottom.set_ylim(bottom=min(-10 * linthresh, 1.5 * lowest))
        symlog_decade_ticks(bottom, linthresh)
        bottom.set_xlabel("noise level σ (VE)")
        bottom.set_ylabel(f"gap J(σ) − J*(σ)  (symlog, linear within ±{linthresh:.1g})")
        bottom.legend(fontsize=7, ncol=2, loc="lower left")
    fig.suptitle("Per-σ x0-loss gap to the optimal loss (solid: train, dashed: test; bands ± 2 SE)",
                 fontsize=11)
    save_figure(fig, path)


def plot_variant_samples(results: list[dict], shape, path, name: str) -> None:
    """One panel of samples per variant (images as a grid, points as a scatter)."""
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.4), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        show_samples(ax, np.asarray(r["samples"]), pad=1)  # one white pixel between images
        ax.set_title(f"{r['variant']} ({r['target']})", fontsize=9)
    fig.suptitle(f"{name}: samples (Heun, 18 levels, EMA weights)", fontsize=10)
    save_figure(fig, path)
