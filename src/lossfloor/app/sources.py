"""Where a diagnosed model comes from: a `DenoiserSource` per kind (a lossfloor checkpoint, a diffusers
folder, a factory in the user's own Python file), each giving the x0-denoiser, its objective, how to
describe it and where its sigma levels lie.

A new kind of model is one `open_*` function here and one entry in `SOURCES`; `app.diagnose` owns the rest
(data, curve, evaluation, files).
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lossfloor.core.errors import InputError
from lossfloor.core.registry import Registry
from lossfloor.data.dataset import Dataset
from lossfloor.evaluate.adapters import CallableDenoiser
from lossfloor.integrations.diffusers import (
    check_data,
    import_diffusers,
    load_diffusers,
    sigma_grid,
    snap_to_training_levels,
)
from lossfloor.objective.objective import Objective, get_objective
from lossfloor.train.checkpoint import load_checkpoint
from lossfloor.train.trainer import reload_data

TIMESTEP_CONVENTION = {
    "vp": "model(sqrt(alpha_bar) x~, t T - 1): levels snapped to the scheduler's integer timesteps",
    "flow": "model((1 - t) x~, t T), t = sigma / (1 + sigma): levels snapped to the scheduler's sigmas",
    "edm": "model(c_in x~, precondition_noise(sigma)), x0 = precondition_outputs",
}


def _geometric(sigma_min: float, sigma_max: float, levels: int) -> np.ndarray:
    return np.geomspace(sigma_min, sigma_max, levels)


def _unchanged(sigmas) -> np.ndarray:
    return np.asarray(sigmas, dtype=float)


@dataclass(frozen=True)
class DenoiserSource:
    """A model to diagnose: its x0-denoiser and objective, how it is described, and its sigma-grid policy."""

    denoiser: nn.Module
    objective: Objective
    model_line: str  # the header's "model:" line
    title: str  # the model's part of the plot title
    head: dict  # result-file fields that identify the model
    tail: dict = field(default_factory=dict)  # result-file fields after the run's settings
    notes: tuple[str, ...] = ()  # extra header lines (how levels map to the model's conditioning)
    levels: Callable[[float, float, int], np.ndarray] = _geometric  # the grid when J* is estimated here
    snap: Callable[[np.ndarray], np.ndarray] = _unchanged  # a curve's levels moved to the model's
    own_data: Callable[[str], Dataset] | None = None  # the data it was trained on, by split, if known
    check_data: Callable[[Dataset], None] = lambda dataset: None


def open_checkpoint(s, device: torch.device) -> DenoiserSource:
    """A lossfloor checkpoint (`train`'s checkpoint.pt): EMA weights unless --raw-weights."""
    ckpt = load_checkpoint(s.checkpoint)
    parameters = ckpt.state.get("parameters")
    weights = "raw" if s.raw_weights else "EMA"

    def check(dataset: Dataset) -> None:
        if tuple(dataset.shape) != ckpt.model.shape:
            raise InputError(f"the checkpoint was trained on data of shape {ckpt.model.shape}, but "
                             f"{dataset.name} has shape {tuple(dataset.shape)}")

    return DenoiserSource(
        denoiser=ckpt.denoiser(ema=not s.raw_weights, device=device), objective=ckpt.objective,
        model_line=(f"{ckpt.path} ({ckpt.model.kind}" + (f", {parameters:,} parameters" if parameters else "")
                    + f", step {ckpt.step}, {weights} weights)"),
        title=f"{ckpt.model.kind}, step {ckpt.step}",
        head={"checkpoint": str(ckpt.path), "step": ckpt.step, "model": ckpt.model.to_dict()},
        tail={"weights": weights.lower()},
        own_data=lambda split: reload_data(ckpt, split), check_data=check)


def open_diffusers(s, device: torch.device) -> DenoiserSource:
    """A diffusers save_pretrained folder (UNet2DModel + scheduler), read as an x0-denoiser."""
    if s.raw_weights:
        raise InputError("--raw-weights applies to lossfloor checkpoints; a diffusers folder has one set of "
                         "weights (save the EMA model with save_pretrained to diagnose it)")
    try:
        import_diffusers()
    except ImportError as err:
        raise InputError(f"--diffusers: {err}") from None
    loaded = load_diffusers(s.diffusers)
    denoiser = loaded.denoiser(device)
    d, parameters = loaded.describe(), sum(p.numel() for p in loaded.model.parameters())
    convention = TIMESTEP_CONVENTION[denoiser.family]
    return DenoiserSource(
        denoiser=denoiser, objective=denoiser.objective,
        model_line=f"{d['path']} ({d['model_class']}, {parameters:,} parameters; {d['scheduler_class']})",
        title=f"diffusers {type(loaded.model).__name__}",
        head={"diffusers": d, "timesteps": convention},
        notes=(convention,),
        levels=lambda lo, hi, n: sigma_grid(denoiser, lo, hi, n),
        snap=lambda sigmas: snap_to_training_levels(denoiser, sigmas),
        check_data=lambda dataset: check_data(loaded, dataset.shape, dataset.x))


def load_factory(spec: str) -> Callable:
    """FILE.py:FACTORY -> the factory function.  This imports FILE.py: it runs the user's own code."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise InputError(f"--denoiser {spec!r}: expected FILE.py:FACTORY (a Python file, a function in it)")
    file = Path(path)
    if not file.is_file() or file.suffix != ".py":
        raise InputError(f"--denoiser {spec}: {file} is not a Python (.py) file")
    module_spec = importlib.util.spec_from_file_location(f"lossfloor_user_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # the user's code: its own errors surface with their traceback
    factory = getattr(module, name, None)
    if not callable(factory):
        raise InputError(f"--denoiser {spec}: {file} defines no function {name!r}")
    return factory


def open_denoiser(s, device: torch.device) -> DenoiserSource:
    """A user's factory (--denoiser FILE.py:FACTORY) returning ``denoise(x_noisy, sigma) -> x0_hat``
    (EDM / k-diffusion convention), under --objective.  Runs the user's code."""
    if s.raw_weights:
        raise InputError("--raw-weights applies to lossfloor checkpoints; the factory returns one denoiser")
    if s.objective is None:
        raise InputError("--denoiser needs --objective: the objective the model was trained with (its "
                         "weight and noise density make the total)")
    objective = get_objective(s.objective)
    factory = load_factory(s.denoiser)
    kwargs = {"device": device} if "device" in inspect.signature(factory).parameters else {}
    denoise = factory(**kwargs)
    if not callable(denoise):
        raise InputError(f"--denoiser {s.denoiser}: the factory returned {type(denoise).__name__}, not a "
                         "callable denoise(x_noisy, sigma) -> x0_hat")
    module = CallableDenoiser(denoise).to(device)

    def check(dataset: Dataset) -> None:
        x = dataset.x[:2].float().to(device)
        with torch.no_grad():
            out = module(x, torch.full((len(x),), 1.0, device=device))
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x.shape):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"--denoiser {s.denoiser}: returned {got} for input of shape {tuple(x.shape)}; "
                             "expected x0_hat of the input's shape")

    return DenoiserSource(
        denoiser=module, objective=objective,
        model_line=f"{s.denoiser} (user code, called as denoise(x0 + sigma eps, sigma) -> x0_hat)",
        title=f"{Path(s.denoiser.rpartition(':')[0]).name}", head={"denoiser": s.denoiser},
        check_data=check)


SOURCES = Registry("model source")
SOURCES.add("checkpoint", open_checkpoint, "a lossfloor checkpoint (--checkpoint)")
SOURCES.add("diffusers", open_diffusers, "a diffusers save_pretrained folder (--diffusers)")
SOURCES.add("denoiser", open_denoiser, "a factory in your own Python file (--denoiser FILE.py:FACTORY)")
