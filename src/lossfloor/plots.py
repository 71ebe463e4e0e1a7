"""Plotting helpers shared by the commands: matplotlib (Agg), written atomically."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .curve import OptimalLossCurve, atomic_write_bytes  # noqa: E402
from .formulation import Objective  # noqa: E402

WEIGHT_DYNAMIC_RANGE = 1e12  # the lambda * p axis stops this many orders below its maximum
ATOM_BINS_PER_DECADE = 10  # discrete objectives: atoms are counted in bins this wide


def save_figure(fig, path) -> None:
    """Save a figure as PNG atomically (rendered in memory, then written and renamed) and close it."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def weight_density(objective: Objective, sigma: np.ndarray) -> np.ndarray:
    """lambda(sigma) p(log sigma) on a log-spaced sigma grid; discrete objectives are binned on it."""
    sigma = np.asarray(sigma, dtype=float)
    if not objective.is_discrete:
        log_p = objective.log_density(torch.tensor(np.log(sigma))).numpy()
        lam = objective.x0_weight(torch.tensor(sigma)).numpy()
        return np.where(np.isfinite(log_p), np.exp(log_p), 0.0) * lam
    # Atoms of equal mass: sum lambda / T over the atoms in each log-sigma bin, divided by its width.
    atoms = objective.atoms().numpy()
    lam = objective.x0_weight(torch.tensor(atoms)).numpy()
    log_lo, log_hi = np.log10(sigma[0]), np.log10(sigma[-1])
    edges = np.linspace(log_lo, log_hi, max(2, round((log_hi - log_lo) * ATOM_BINS_PER_DECADE)) + 1)
    mass, _ = np.histogram(np.log10(atoms), bins=edges, weights=lam / len(atoms))
    density = mass / (np.diff(edges) * np.log(10))  # per unit natural log sigma, as p(log sigma)
    return density[np.clip(np.searchsorted(edges, np.log10(sigma), side="right") - 1, 0, len(density) - 1)]


def plot_curve(curve: OptimalLossCurve, objective: Objective, path, title: str = "") -> None:
    """J*(sigma) on a log axis with its data-variance asymptote, the critical sigma and the
    objective's lambda(sigma) p(log sigma) on a second axis."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.fill_between(curve.sigma, curve.loss - 2 * curve.stderr, curve.loss + 2 * curve.stderr,
                    color="C0", alpha=0.25, lw=0, label="± 2 standard errors")
    ax.plot(curve.sigma, curve.loss, "o-", color="C0", ms=3, label="optimal loss J*(σ) per dimension")
    ax.axhline(curve.data_variance, color="k", ls="--", lw=1,
               label=f"data variance {curve.data_variance:.4g} (σ → ∞ limit)")
    critical = curve.critical_sigma()
    if math.isfinite(critical):
        ax.axvline(critical, color="C3", ls=":", lw=1.5,
                   label=f"critical σ ≈ {critical:.3g} (J* > 1% of variance)")
    ax.set_xscale("log")
    ax.set_xlabel("noise level σ (VE: σ_t / α_t)")
    ax.set_ylabel("J*(σ)  (per-dimension x0 MSE)")
    ax.set_ylim(bottom=min(0.0, float(np.min(curve.loss - 2 * curve.stderr))), top=1.08 * curve.data_variance)

    twin = ax.twinx()
    grid = np.geomspace(curve.sigma[0], curve.sigma[-1], 400)
    density = weight_density(objective, grid)
    shown = density > density.max() / WEIGHT_DYNAMIC_RANGE
    if shown.any():
        twin.plot(grid[shown], density[shown], color="C1", lw=1.2, label=f"λ(σ)·p(log σ) of {objective.name}")
        twin.set_yscale("log")
    twin.set_ylabel(f"{objective.name}: weight × density", color="C1")
    twin.tick_params(axis="y", colors="C1")

    lines = ax.get_legend_handles_labels()
    twin_lines = twin.get_legend_handles_labels()
    ax.legend(lines[0] + twin_lines[0], lines[1] + twin_lines[1], loc="upper center", fontsize=8, ncol=2,
              bbox_to_anchor=(0.5, -0.14), frameon=False)  # below the axes: never hides a curve
    ax.set_title(title or f"Optimal loss (N = {curve.n}, D = {curve.dim})", fontsize=10)
    save_figure(fig, path)


def image_grid(x: np.ndarray, side: int, rows: int, cols: int, pad: int = 0) -> np.ndarray:
    """Flattened square images (n, side*side) in [-1, 1] tiled row-major into one array, `pad` white pixels
    above and left of each tile."""
    tiles = np.asarray(x)[: rows * cols].reshape(rows, cols, side, side)
    if pad:
        tiles = np.pad(tiles, ((0, 0), (0, 0), (pad, 0), (pad, 0)), constant_values=1)
    return tiles.transpose(0, 2, 1, 3).reshape(rows * tiles.shape[2], cols * tiles.shape[3])


def _show_samples(ax, x: np.ndarray, pad: int = 0) -> None:
    """Points (n, 2) as a scatter on [-3, 3]^2, flattened square images as an 8 x 8 (or k x k) grid."""
    ax.set_xticks([])
    ax.set_yticks([])
    if x.shape[1] == 2:
        ax.scatter(x[:, 0], x[:, 1], s=1 if not pad else 2, alpha=0.5 if not pad else 1.0)
        if not pad:
            ax.set(xlim=(-3, 3), ylim=(-3, 3))
        return
    side = int(round(math.sqrt(x.shape[1])))
    k = 8 if not pad else int(math.isqrt(len(x)))
    ax.imshow((image_grid(x, side, k, k, pad) + 1) / 2, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest" if pad else None)


# -- the losses study -------------------------------------------------------------------------------


def plot_losses(out, cells: list[dict], floor_curves: dict, targets, weights) -> None:
    """Per dataset: x0 loss vs t against the floor (loss_vs_t.png) and the samples of each (target, loss)
    through the shared sampler (samples.png) and the seed's own samplers (native_samples.png)."""
    from pathlib import Path

    from .formulation import get_objective

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
            if d in floor_curves:
                fc = OptimalLossCurve.from_dict(floor_curves[d])
                ax.plot(cosine.t_of_sigma(torch.tensor(fc.sigma)).numpy(), fc.loss, "k--",
                        label="J* (train set)")
            # J* of a small training set collapses far below any model: keep the models readable
            ax.set(yscale="log", ylim=(lowest / 10, None), xlabel="t  (cosine: sigma = tan(pi t / 2))",
                   title=f"{d}: {w}-trained")
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
            _show_samples(ax, np.asarray(c[key]))
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
        top.plot(opt["sigma"], opt["loss"], "k-", lw=2.2, label="optimal loss J*(σ)")
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
        top.set_ylabel("per-dimension x0 MSE (log)")
        top.set_title(f"{name} (N = {d['data']['n']}): {d['budget']['model']} width {d['budget']['width']}, "
                      f"{d['budget']['steps']} steps × batch {d['budget']['batch_size']}", fontsize=10)
        top.legend(fontsize=7)
        bottom.axhline(0, color="k", lw=0.8)
        bottom.set_yscale("symlog", linthresh=1e-3)
        lowest = min([g["gap"] for r in d["variants"] for g in r["train"]] + [0.0])
        bottom.set_ylim(bottom=min(-1e-3, 2 * lowest))
        bottom.set_xlabel("noise level σ (VE)")
        bottom.set_ylabel("gap J(σ) − J*(σ)  (symlog)")
        bottom.legend(fontsize=7, ncol=2)
    fig.suptitle("Per-σ x0-loss gap to the optimal loss (solid: train, dashed: test; bands ± 2 SE)",
                 fontsize=11)
    save_figure(fig, path)


def plot_variant_samples(results: list[dict], shape, path, name: str) -> None:
    """One panel of samples per variant (images as a grid, points as a scatter)."""
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.4), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        _show_samples(ax, np.asarray(r["samples"]), pad=1)  # one white pixel between images
        ax.set_title(f"{r['variant']} ({r['target']})", fontsize=9)
    fig.suptitle(f"{name}: samples (Heun, 18 levels, EMA weights)", fontsize=10)
    save_figure(fig, path)
