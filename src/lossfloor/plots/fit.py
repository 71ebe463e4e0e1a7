"""The figure of `lossfloor fit`: a user's runs against compute with the frontier fits, with and without
the floor subtracted."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from lossfloor.plots.common import save_figure


def _line(ax, fit, compute, subtract: float, **style) -> None:
    f = np.geomspace(compute.min(), compute.max(), 100)
    ax.plot(f, fit.predict(f) - subtract, **style)


def plot_fit(runs, part: dict, path, title: str = "") -> None:
    """(a) J against compute per run, the frontier, the plain and free fits and the floor; (b) J - J* with
    the corrected fit.  `runs` is an `evaluate.runs.Runs`, `part` one fitted part of `fit_runs`' report."""
    rows = np.asarray(part["rows"], dtype=int)
    front = np.asarray(part["frontier"], dtype=int)
    compute, loss, labels = runs.compute, runs.loss, runs.run
    floor, fits = part["floor"], part["_fits"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    fig.subplots_adjust(wspace=0.28)
    for panel, (ax, subtract) in enumerate(zip(axes, (0.0, floor), strict=True)):
        for i, label in enumerate(sorted(set(labels[rows].tolist()))):
            sel = rows[labels[rows] == label]
            sel = sel[np.argsort(compute[sel])]
            y = loss[sel] - subtract
            ok = y > 0
            ax.plot(compute[sel][ok], y[ok], "o-", color=f"C{i % 10}", ms=3, lw=1, alpha=0.8,
                    label=f"run {label}")
        on = front[loss[front] - subtract > 0]
        ax.plot(compute[on], loss[on] - subtract, "ks", ms=5, mfc="none", label="compute-optimal frontier")
        if panel == 0:
            ax.axhline(floor, color="k", ls=":", lw=1, label=f"floor J* = {floor:.4g}")
            pl, fr = fits["plain"], fits["free"]
            _line(ax, pl, compute[rows], 0.0, color="k", lw=2, ls="--",
                  label=f"plain: {pl.beta:.3g} F^{pl.alpha:.3f}, ρ = {pl.rho:.4f}")
            _line(ax, fr, compute[rows], 0.0, color="C3", lw=2,
                  label=f"free: {fr.floor:.3g} + {fr.beta:.3g} F^{fr.alpha:.3f}")
            ax.set(ylabel="loss J", title="(a) loss, plain and free-floor fits")
        else:
            c = fits["corrected"]
            _line(ax, c, compute[rows], floor, color="k", lw=2,
                  label=f"corrected: {c.beta:.3g} F^{c.alpha:.3f}, ρ = {c.rho:.4f}")
            ax.set(ylabel="J − J*", title=f"(b) gap to the floor J* = {floor:.4g}")
        ax.set(xscale="log", yscale="log", xlabel="training compute F")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
