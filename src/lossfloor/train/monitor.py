"""Per-sigma monitoring of x0 losses: `BinnedLoss` (the trainer's binned log) and `GapMonitor` (the gap
to J*(sigma) inside a user's own training loop).

Both take per-sample x0 losses ||x0_hat - x0||^2 / D (`models.x0_loss`, or `Objective.x0_loss_from_target`
for a loss on the objective's own target) at VE noise levels sigma, and bin them in log sigma.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import torch

from lossfloor.core.files import atomic_write_text
from lossfloor.floor.critical import band_edges, band_rows, band_summary
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.floor.excess import Excess, weighted_excess
from lossfloor.objective.objective import Objective


def default_sigma_edges(sigma_min: float = 1e-3, sigma_max: float = 1e3, per_decade: int = 4) -> np.ndarray:
    """Bin edges evenly spaced in log sigma."""
    decades = math.log10(sigma_max / sigma_min)
    return np.geomspace(sigma_min, sigma_max, round(decades * per_decade) + 1)


class BinnedLoss:
    """Running count, sum and sum of squares of per-sample x0 losses in log-sigma bins.

    Samples outside the outer edges are counted in `outside` and otherwise ignored.
    """

    def __init__(self, edges=None):
        self.edges = np.asarray(default_sigma_edges() if edges is None else edges, dtype=float)
        if len(self.edges) < 2 or np.any(np.diff(self.edges) <= 0) or self.edges[0] <= 0:
            raise ValueError("sigma bin edges must be positive and strictly increasing")
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        k = len(self.edges) - 1
        self.count, self.sum, self.sum_sq = np.zeros(k, dtype=np.int64), np.zeros(k), np.zeros(k)
        self.outside = 0

    @property
    def centers(self) -> np.ndarray:
        """Geometric bin centres."""
        return np.sqrt(self.edges[:-1] * self.edges[1:])

    def update(self, sigma, x0_loss) -> None:
        """Add per-sample x0 losses (per dimension) observed at VE noise levels sigma."""
        sigma = np.asarray(torch.as_tensor(sigma).detach().cpu(), dtype=float).ravel()
        loss = np.asarray(torch.as_tensor(x0_loss).detach().cpu(), dtype=float).ravel()
        if sigma.shape != loss.shape:
            raise ValueError(f"{len(sigma)} noise levels for {len(loss)} losses")
        idx = np.searchsorted(self.edges, sigma, side="right") - 1
        inside = (idx >= 0) & (idx < len(self.count))
        self.outside += int((~inside).sum())
        k = len(self.count)
        self.count += np.bincount(idx[inside], minlength=k)
        self.sum += np.bincount(idx[inside], loss[inside], minlength=k)
        self.sum_sq += np.bincount(idx[inside], loss[inside] ** 2, minlength=k)

    def mean(self) -> np.ndarray:
        """Mean x0 loss per bin (nan where empty)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum / self.count

    def stderr(self) -> np.ndarray:
        """Standard error of each bin's mean (nan with fewer than 2 samples)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            var = (self.sum_sq - self.sum**2 / self.count) / (self.count - 1)
            return np.sqrt(np.clip(var, 0, None) / self.count)

    def rows(self) -> list[dict]:
        """One dict per bin: edges, centre, count, mean and standard error."""
        mean, se = self.mean(), self.stderr()
        return [dict(sigma_lo=float(self.edges[i]), sigma_hi=float(self.edges[i + 1]),
                     sigma=float(self.centers[i]), count=int(self.count[i]),
                     x0_loss=float(mean[i]), stderr=float(se[i])) for i in range(len(self.count))]

    def state_dict(self) -> dict:
        return dict(edges=self.edges.tolist(), count=self.count.tolist(), sum=self.sum.tolist(),
                    sum_sq=self.sum_sq.tolist(), outside=self.outside)

    def load_state_dict(self, state: dict) -> None:
        self.edges = np.asarray(state["edges"], dtype=float)
        self.count = np.asarray(state["count"], dtype=np.int64)
        self.sum = np.asarray(state["sum"], dtype=float)
        self.sum_sq = np.asarray(state["sum_sq"], dtype=float)
        self.outside = int(state["outside"])


def binned_excess(gap: BinnedLoss, objective: Objective) -> Excess:
    """`FloorValidator`'s scalar on binned gaps: the objective-weighted excess sum_k w_k gap_k over the
    non-empty bins, at their geometric centres (`floor.excess.weighted_excess`; nan with fewer than 2)."""
    full = gap.count > 0
    return weighted_excess(objective, gap.centers[full], gap.mean()[full], gap.stderr()[full])


def default_bands(curve: OptimalLossCurve) -> np.ndarray:
    """sigma* x {0.1, 1, 10} of the curve (none without a sigma*)."""
    return band_edges(curve.critical_sigma())


class GapMonitor:
    """Running per-log-sigma-bin x0 loss, optimal loss and gap of a training loop.

    ``update(sigma, x0_loss)`` takes VE noise levels and per-sample x0 losses ||x0_hat - x0||^2 / D;
    ``update_from_target(t, target_loss)`` converts a per-sample target loss (eps, v, ...) of the
    objective at process times t first.  Each sample's floor J*(sigma_i) is binned alongside, so a bin's
    gap compares like with like however wide it is.  With an objective, `summary` adds the weighted
    totals E[lambda (J - J*)] over the samples seen, ``excess``: `FloorValidator`'s scalar, the
    objective-weighted excess over the floor on the binned gaps (`binned_excess`), as the trainer logs it, and
    each sigma band's share of the weighted gap (`band_edges`, default sigma* x {0.1, 1, 10}: "62% of the
    gap at sigma < 0.5, ...", `where`).
    """

    def __init__(self, curve: OptimalLossCurve, objective: Objective | None = None, edges=None,
                 band_edges=None):
        self.curve, self.objective = curve, objective
        self.loss, self.floor, self.gap = BinnedLoss(edges), BinnedLoss(edges), BinnedLoss(edges)
        self._weighted = np.zeros(3)  # sums of lambda J, lambda J*, count
        self.band_edges = np.asarray(default_bands(curve) if band_edges is None else band_edges, dtype=float)
        self._bands = np.zeros(len(self.band_edges) + 1)  # sums of lambda (J - J*) per sigma band

    def reset(self) -> None:
        """Start a new interval."""
        for b in (self.loss, self.floor, self.gap):
            b.reset()
        self._weighted[:] = 0
        self._bands[:] = 0

    def update(self, sigma, x0_loss) -> None:
        """Add per-sample x0 losses (per dimension) at VE noise levels sigma."""
        sigma = np.asarray(torch.as_tensor(sigma).detach().cpu(), dtype=float).ravel()
        loss = np.asarray(torch.as_tensor(x0_loss).detach().cpu(), dtype=float).ravel()
        floor = np.asarray(self.curve(sigma), dtype=float)
        self.loss.update(sigma, loss)
        self.floor.update(sigma, floor)
        self.gap.update(sigma, loss - floor)
        if self.objective is not None:
            lam = self.objective.x0_weight(torch.as_tensor(sigma)).numpy()
            self._weighted += [np.sum(lam * loss), np.sum(lam * floor), len(loss)]
            which = np.searchsorted(self.band_edges, sigma, side="right")
            self._bands += np.bincount(which, lam * (loss - floor), minlength=len(self._bands))

    def update_from_target(self, t, target_loss) -> None:
        """Add per-sample losses on the objective's own target (per dimension) at process times t."""
        if self.objective is None:
            raise ValueError("update_from_target needs the objective that defines the target")
        t = torch.as_tensor(t, dtype=torch.float64).detach().cpu()
        x0_loss = self.objective.x0_loss_from_target(t, torch.as_tensor(target_loss).detach().cpu())
        self.update(self.objective.process.ve_sigma(t), x0_loss)

    def summary(self) -> dict:
        """Per-bin rows (x0 loss, J*, gap with standard errors) and, with an objective, weighted totals."""
        rows = []
        for lo, fl, gp in zip(self.loss.rows(), self.floor.rows(), self.gap.rows(), strict=True):
            if lo["count"]:
                rows.append({"sigma_lo": lo["sigma_lo"], "sigma_hi": lo["sigma_hi"], "sigma": lo["sigma"],
                             "count": lo["count"], "x0_loss": lo["x0_loss"], "x0_loss_stderr": lo["stderr"],
                             "optimal_loss": fl["x0_loss"], "gap": gp["x0_loss"], "gap_stderr": gp["stderr"],
                             "relative_gap": gp["x0_loss"] / self.curve.data_variance})
        out = {"bins": rows, "outside": self.loss.outside}
        if self.objective is not None and self._weighted[2]:
            model, floor, n = self._weighted
            excess = binned_excess(self.gap, self.objective)
            out.update(objective=self.objective.name, weighted_loss=model / n, weighted_optimal=floor / n,
                       weighted_gap=(model - floor) / n, excess=excess.value, excess_stderr=excess.stderr,
                       excess_coverage=excess.coverage,
                       gap_bands=band_rows(self.band_edges, self._bands / n) if len(self.band_edges) else [])
        return out

    def where(self) -> str:
        """Each band's share of the weighted gap so far, one line ("62% of the gap at sigma < 0.5, ...")."""
        return band_summary(self.summary().get("gap_bands", []))

    def to_csv(self, path=None) -> str:
        """The per-bin rows as CSV text, also written atomically to `path` when given."""
        rows = self.summary()["bins"]
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        if path is not None:
            atomic_write_text(path, buf.getvalue())
        return buf.getvalue()

    def log_tensorboard(self, writer, step: int) -> None:
        """Scalars gap/log_sigma_<centre> (and the weighted total) on a SummaryWriter."""
        summary = self.summary()
        for row in summary["bins"]:
            writer.add_scalar(f"gap/log_sigma_{math.log(row['sigma']):+.2f}", row["gap"], step)
        if "weighted_gap" in summary:
            writer.add_scalar("gap/weighted_total", summary["weighted_gap"], step)
            writer.add_scalar("floor/excess", summary["excess"], step)
