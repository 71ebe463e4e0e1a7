"""Checks shared by the commands: the sigma grid, the output folder, the device and the grid's coverage."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lossfloor.app.checks import check_out_path
from lossfloor.core.errors import InputError
from lossfloor.core.schema import read_json
from lossfloor.data.dataset import data_label
from lossfloor.floor.curve import OptimalLossCurve, sigma_grid_coverage
from lossfloor.objective.objective import Objective
from lossfloor.objective.targets import Preconditioning

SIGMA_GRID = (0.002, 80.0, 32)  # EDM's range; curve.total covers 6 more decades each side for every preset
DTYPES = ("float32", "float64")


# -- shared checks ----------------------------------------------------------------------------


def parse_sigmas(sigmas: Sequence[float] | None, sigma_min: float | None = None,
                 sigma_max: float | None = None, num_sigmas: int | None = None) -> list[float]:
    """The sigma grid: explicit levels (`--sigmas`, parsed by its click type), or geometric from --sigma-min
    to --sigma-max."""
    if sigmas is not None:
        if (sigma_min, sigma_max, num_sigmas) != (None, None, None):
            raise InputError("give either --sigmas or --sigma-min/--sigma-max/--num-sigmas, not both")
        grid = [float(s) for s in sigmas]
        if not grid:
            raise InputError("--sigmas: no noise levels given")
    else:
        lo, hi, num = (d if v is None else v for v, d in zip((sigma_min, sigma_max, num_sigmas), SIGMA_GRID,
                                                              strict=True))
        if num < 2 or not 0 < lo < hi or not math.isfinite(hi):
            raise InputError(f"need 0 < --sigma-min < --sigma-max and --num-sigmas >= 2, got {lo}, {hi}, "
                             f"{num}")
        grid = np.geomspace(lo, hi, num).tolist()
    bad = [s for s in grid if not (s > 0 and math.isfinite(s))]
    if bad:
        raise InputError(f"noise levels must be positive and finite, got {bad[0]}")
    return sorted(set(grid))


def check_out_dir(out, names, *, resume: bool = False, force: bool = False) -> None:
    """--out must be a writable folder (or creatable); existing results need --resume or --force."""
    out = Path(out)
    if resume and force:
        raise InputError("give either --resume or --force, not both")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file, not a folder")
    check_out_path(out)  # writable, no dangling symbolic link on the way
    existing = [n for n in names if (out / n).exists()]
    if existing and not (resume or force):
        raise InputError(f"--out {out} already holds {', '.join(existing)}; pass --resume to continue "
                         "or --force to overwrite")


def resolve_device(device: str) -> torch.device:
    """--device as a torch.device, refusing CUDA where there is none."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device: unknown device {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"--device {device}: expected cpu, cuda or cuda:K")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices")
    return dev


CURVE_SANITY_SE = 4.0  # J* may stray this many standard errors outside [0, variance] (Monte-Carlo noise)


def matching_curve(path, dataset, option: str = "--curve") -> OptimalLossCurve:
    """The curve in `path`, checked against the data it is used with: the same data (fingerprint and
    dimension), unconditional, and J* a plausible floor (0 <= J* <= the data variance, within its standard
    error); InputError naming the option and file otherwise."""
    curve = OptimalLossCurve.load(path)
    dim = int(np.prod(dataset.shape))
    if curve.dim != dim:
        raise InputError(f"{option} {path} is a curve of {curve.dim}-dimensional data, but {dataset.name} "
                         f"has dimension {dim}; recompute it with `lossfloor estimate`")
    if curve.fingerprint != dataset.fingerprint:
        theirs = data_label(read_json(path, "curve JSON file").get("data"))
        ours = data_label(dataset.describe())
        same = " (the same name, but other points)" * (theirs == ours)
        raise InputError(f"{option} {path} was computed on {theirs}, the model is evaluated on {ours}{same}; "
                         f"recompute it with `lossfloor estimate --data {dataset.name}`")
    if curve.settings.get("class_conditional"):
        raise InputError(f"{option} {path} is class-conditional; the model is unconditional")
    slack = CURVE_SANITY_SE * np.asarray(curve.stderr) + 1e-6 * curve.data_variance
    low = np.asarray(curve.loss) < -slack
    high = np.asarray(curve.loss) > curve.data_variance + slack
    if low.any() or high.any():
        k = int(np.argmax(low | high))
        raise InputError(f"{option} {path}: J*({curve.sigma[k]:.4g}) = {curve.loss[k]:.4g} ± "
                         f"{curve.stderr[k]:.2g} is not in [0, {curve.data_variance:.4g}] (the data "
                         "variance): not an optimal-loss curve; recompute it with `lossfloor estimate`")
    return curve


def check_coverage(objective: Objective, sigmas) -> None:
    """Raise ValueError unless a curve on `sigmas` (with its tails) covers the objective's noise levels."""

    sigma_grid_coverage(objective, sigmas)


SIGMA_DATA_RATIO = 2.0  # a data standard deviation outside [sigma_data / 2, 2 sigma_data] gets a note


def with_sigma_data(objective: Objective, sigma_data: float | None) -> Objective:
    """The objective with EDM's preconditioning for data of standard deviation `sigma_data` (None: as is)."""
    return objective if sigma_data is None else objective.with_(precond=Preconditioning(float(sigma_data)))


def sigma_data_note(objective: Objective, variance: float) -> str | None:
    """One line when the data's standard deviation per dimension is far from the preconditioning's sigma_data
    (the network's input scale c_in, and EDM's weight and F target, assume it), else None."""
    sd, assumed = math.sqrt(max(variance, 0.0)), objective.precond.sigma_data
    if assumed / SIGMA_DATA_RATIO <= sd <= assumed * SIGMA_DATA_RATIO:
        return None
    return (f"note: the data's standard deviation per dimension is {sd:.3g}, far from the preconditioning's "
            f"sigma_data = {assumed:g}; pass --sigma-data {sd:.3g} to precondition for this data")
