"""Plotting helpers shared by the commands: matplotlib (Agg), written atomically."""

from __future__ import annotations

import io
import math

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lossfloor.core.files import atomic_write_bytes
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.objective.objective import Objective, get_objective

matplotlib.use("Agg")



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
    mark_critical_sigma(ax, curve.critical_sigma())
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


def plot_samples(x: torch.Tensor, path, reference: torch.Tensor | None = None, title: str = "") -> None:
    """Images (N, C, H, W) in [-1, 1] as a grid; points as a scatter of the first two coordinates over
    the reference data in grey."""
    x = x.detach().cpu().float()
    if x.dim() == 4:
        n, c, h, w = x.shape
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c))
        pixels = ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        for i in range(n):
            r, k = divmod(i, cols)
            grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + k * (w + 1):1 + k * (w + 1) + w] = pixels[i]
        fig, ax = plt.subplots(figsize=(min(12, 0.35 * cols * max(w, 8) / 8 + 1),) * 2)
        ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
    else:
        pts = x.reshape(len(x), -1)
        if pts.shape[1] < 2:
            raise ValueError(f"cannot draw points of shape {tuple(x.shape[1:])}: need 2 or more coordinates")
        fig, ax = plt.subplots(figsize=(5.5, 5.5))
        if reference is not None:
            ref = reference.reshape(len(reference), -1)[:, :2].cpu().numpy()
            ax.scatter(ref[:, 0], ref[:, 1], s=2, color="0.7", label="data")
        ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=3, color="C0", label="samples")
        ax.set_aspect("equal")
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def plot_above(ax, x, y, bottom: float, style: str, label: str, **kw) -> None:
    """A curve on a log y axis that starts at `bottom`: drawn where y > bottom, and at the levels where it is
    below (J* of a finite training set is 0 at small sigma) a downward triangle on the axis floor, so the
    plot shows where the curve leaves zero instead of a vertical cliff."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    shown = y > bottom
    ax.plot(x, np.where(shown, y, np.nan), style, label=label, **kw)
    if not shown.all():
        color = kw.get("color", ax.get_lines()[-1].get_color())
        ax.plot(x[~shown], np.full((~shown).sum(), bottom * 1.6), "v", color=color, ms=5, ls="none",
                label=f"{label.split(' ')[0]} below {bottom:.0e} (≈ 0) here")


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
        _show_samples(ax, np.asarray(r["samples"]), pad=1)  # one white pixel between images
        ax.set_title(f"{r['variant']} ({r['target']})", fontsize=9)
    fig.suptitle(f"{name}: samples (Heun, 18 levels, EMA weights)", fontsize=10)
    save_figure(fig, path)


# -- diagnosis ---------------------------------------------------------------------------------------


def critical_sigma_of(sigma, optimal_loss, data_variance: float, fraction: float = 0.01) -> float:
    """The smallest sigma whose J* exceeds `fraction` of the data variance (as `OptimalLossCurve`'s)."""
    curve = OptimalLossCurve(sigma, optimal_loss, np.zeros(len(sigma)), data_variance, 1, 1)
    return curve.critical_sigma(fraction)


def mark_critical_sigma(ax, critical: float, label: bool = True) -> None:
    """A dotted vertical line at the critical sigma (J* > 1% of the data variance)."""
    if math.isfinite(critical):
        ax.axvline(critical, color="C3", ls=":", lw=1.5,
                   label=f"critical σ* ≈ {critical:.3g} (J* > 1% of variance)" if label else None)


def gap_linthresh(gaps, stderrs) -> float:
    """The linear range of a symlog gap axis: the smallest standard error of any level, so that every gap
    resolved from 0 (the small-sigma ones are tiny but precise) lands on the logarithmic part."""
    se = np.asarray([s for s in stderrs if np.isfinite(s) and s > 0])
    scale = float(np.max(np.abs(gaps))) if len(gaps) else 1.0
    return float(max(se.min() if len(se) else 0.0, 1e-9 * max(scale, 1e-12)))


def symlog_decade_ticks(ax, linthresh: float, most: int = 5) -> None:
    """At most `most` labelled decades on each side of a symlog y axis (and 0), so labels never collide."""
    lo, hi = ax.get_ylim()
    first = math.floor(math.log10(linthresh)) + 1  # the decade at the threshold would sit on the 0 label
    ticks = [0.0]
    for sign, end in ((1, hi), (-1, -lo)):
        if end > linthresh:
            decades = list(range(first, math.ceil(math.log10(end)) + 1))
            step = max(1, math.ceil(len(decades) / most))
            ticks += [sign * 10.0**k for k in decades[::-1][::step]]
    ax.set_yticks(sorted(ticks))
    ax.set_ylim(lo, hi)


def plot_diagnosis(diagnosis, path, title: str = "") -> None:
    """Model loss and J* against sigma (top) and the gap with 2-SE bands (bottom, symlog: linear only within
    the smallest standard error), train and test, with the critical sigma marked on both."""
    fig, (ax, gap_ax) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True,
                                     gridspec_kw={"height_ratios": [3, 2]})
    sig = np.array([g.sigma for g in diagnosis.train])
    j_star = np.array([g.optimal_loss for g in diagnosis.train])
    variance = diagnosis.train[0].data_variance
    ax.plot(sig, j_star, "k-", lw=2, label="optimal loss J*(σ)")
    all_gaps, all_se = [], []
    for split, gaps, color in (("train", diagnosis.train, "C0"), ("test", diagnosis.test, "C1")):
        if not gaps:
            continue
        m = np.array([g.model_loss for g in gaps])
        gap = np.array([g.gap for g in gaps])
        se = np.array([g.gap_stderr for g in gaps])
        all_gaps += list(gap)
        all_se += list(se)
        ax.plot(sig, m, "o-", color=color, ms=3, label=f"model x0 loss ({split})")
        gap_ax.fill_between(sig, gap - 2 * se, gap + 2 * se, color=color, alpha=0.25, lw=0)
        gap_ax.plot(sig, gap, "o-", color=color, ms=3, label=f"gap ({split}) ± 2 SE")
    bad = diagnosis.violations
    if bad:
        gap_ax.plot([g.sigma for g in bad], [g.gap for g in bad], "rx", ms=10, mew=2,
                    label="below the floor: impossible")
    ax.axhline(variance, color="gray", ls="--", lw=1, label="data variance")
    critical = critical_sigma_of(sig, j_star, variance)
    mark_critical_sigma(ax, critical)
    mark_critical_sigma(gap_ax, critical, label=False)
    ax.set_xscale("log")
    ax.set_ylabel("per-dimension x0 MSE")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    gap_ax.axhline(0, color="k", lw=0.8)
    linthresh = gap_linthresh(all_gaps, all_se)
    gap_ax.set_yscale("symlog", linthresh=linthresh)
    symlog_decade_ticks(gap_ax, linthresh)
    gap_ax.set_xlabel("noise level σ (VE)")
    gap_ax.set_ylabel(f"gap J(σ) − J*(σ)\n(symlog, linear within ±{linthresh:.2g})")
    gap_ax.legend(fontsize=8)
    save_figure(fig, path)
