"""Hugging Face diffusers models on lossfloor's yardstick: scheduler -> `Objective`, model -> x0-denoiser.

Nothing is downloaded: importing this module sets ``HF_HUB_OFFLINE=1`` (before diffusers, and so
huggingface_hub, is imported) and every load reads a local ``save_pretrained`` folder with
``local_files_only=True``.

What `objective_from_scheduler` maps (anything else is refused with `UnsupportedScheduler`, one line):

* **VP schedulers with ``alphas_cumprod``** (DDPM, DDIM, PNDM, Euler, DPM-Solver, UniPC, ...): the process
  is ``Discrete(alphas_cumprod)`` read from the scheduler itself (float32 values, held in float64); diffusers
  timestep k is lossfloor time t = (k + 1) / T; the time distribution is uniform over the T integer
  timesteps (``torch.randint(0, T)`` in train_unconditional.py); the target comes from ``prediction_type``
  (epsilon -> eps, v_prediction -> v, sample -> x0) with the plain MSE (weight "simple").
  ``rescale_betas_zero_snr`` makes alpha_bar_T = 0 (sigma = infinity): it is replaced by 2**-24, the value
  diffusers' own Euler, DPM-Solver and UniPC schedulers use, or by the log-linear extrapolation of the two
  levels before it where that is smaller (so the levels stay increasing), which puts the last level at
  sigma >= 4096 (where J* is the data variance to 1e-7); with ``prediction_type="epsilon"`` it is refused,
  since an epsilon prediction determines no x0 at alpha_bar = 0.
* **Flow matching** (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler): the Flow process
  x_t = (1 - t) x0 + t eps with t the scheduler's (shifted) sigma, velocity target noise - x0.  The time
  distribution is the SD3/Flux training scripts' default ``weighting_scheme="logit_normal"`` (mean 0, std
  1) pushed through the shift: t ~ LogitNormal(log(shift) - mean, std).  ``weighting_scheme="none"``
  (uniform u) is mapped at shift 1 only.  The scripts round u onto the scheduler's T-level grid; the
  continuous distribution differs from that by O(1/T).
* **EDM** (EDMEulerScheduler, EDMDPMSolverMultistepScheduler): the VE process, EDM's F target with the
  scheduler's ``sigma_data`` (``v_prediction`` is -F, the same loss) and EDM's weight; the time
  distribution is EDM's log-normal (P_mean -1.2, P_std 1.2), because diffusers ships no EDM training
  default.

`DiffusersDenoiser` turns a model and its scheduler into lossfloor's x0-denoiser ``D(x~, sigma)`` of VE
coordinates, the way the scheduler's ``step()`` reads the model: VP models see x_t = sqrt(alpha_bar) x~
and timestep t T - 1 (an integer on the training levels, fractional between them); flow models see
x_t = (1 - t) x~ and timestep t T (FlowMatchEulerDiscreteScheduler.timesteps); EDM models see c_in x~ and
the scheduler's ``precondition_noise(sigma)``.  The x0 estimate is the raw one implied by the prediction
(the quantity the training loss measures); ``clip_sample=True`` clamps it as ``step()`` does when the
scheduler's ``clip_sample`` is set.  `sigma_grid` snaps a diagnosis grid onto the scheduler's own
training levels, so a diagnosed model is only ever queried at timesteps it was trained on.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from lossfloor.core.errors import InputError
from lossfloor.integrations.diffusers_config import (
    check_scheduler_config,
    count_parameters,
    load_weights,
    quiet,
    read_config,
)
from lossfloor.objective.densities import DiscreteUniformT, LogSigmaNormal, UniformT
from lossfloor.objective.objective import Objective
from lossfloor.objective.processes import VE, Discrete, Flow
from lossfloor.objective.targets import Preconditioning, per_sample, process_input, x0_from_prediction

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers / huggingface_hub read it: never contact the hub


TARGET_OF_PREDICTION = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
ZERO_SNR_ALPHA_BAR = 2.0**-24  # diffusers' Euler / DPM-Solver / UniPC stand-in for alpha_bar_T = 0
FLOW_WEIGHTING = ("logit_normal", "none")
MODEL_FOLDERS = ("unet", "transformer", ".")
SUPPORTED_MODELS = ("UNet2DModel",)


class UnsupportedScheduler(InputError):
    """A scheduler configuration lossfloor cannot map onto an objective."""


def import_diffusers():
    """The diffusers module (an optional dependency: `pip install lossfloor[diffusers]`)."""
    try:
        import diffusers
    except ImportError:
        raise ImportError("the diffusers integration needs diffusers: pip install 'lossfloor[diffusers]'") \
            from None
    try:  # huggingface_hub may have been imported before this module set HF_HUB_OFFLINE
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
    except (ImportError, AttributeError):
        pass
    return diffusers


# --------------------------------------------------------------------------------------------
# Schedulers -> objectives.
# --------------------------------------------------------------------------------------------


def load_scheduler(scheduler_or_config):
    """A diffusers scheduler from itself, a config dict (with ``_class_name``), or a scheduler_config.json
    (or the folder holding it); the config is checked (`diffusers_config`) before diffusers builds it."""
    if isinstance(scheduler_or_config, import_diffusers().ConfigMixin):
        return scheduler_or_config
    config, where = scheduler_or_config, "scheduler config"
    if isinstance(config, (str, Path)):
        path = Path(config)
        path = path / "scheduler_config.json" if path.is_dir() else path
        config, where = read_config(path, "scheduler_config.json"), str(path)
    if not isinstance(config, dict):
        raise UnsupportedScheduler(f"{where}: expected a scheduler config (a dict), got "
                                   f"{type(config).__name__}")
    name = config.get("_class_name")
    diffusers = import_diffusers()
    cls = getattr(diffusers, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)
            and issubclass(cls, diffusers.ConfigMixin) and cls is not diffusers.SchedulerMixin):
        raise UnsupportedScheduler(f"{where}: unknown diffusers scheduler class {name!r}")
    check_scheduler_config(config, where)
    try:
        with quiet():
            return cls.from_config(config)
    except Exception as err:  # noqa: BLE001 - diffusers raises TypeError, ValueError, ... on bad configs
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UnsupportedScheduler(f"{where}: {name}: invalid configuration ({first})") from None


def scheduler_family(scheduler) -> str:
    """'flow', 'edm' or 'vp' (alphas_cumprod); UnsupportedScheduler for anything else."""
    name = type(scheduler).__name__
    if name.startswith("FlowMatch") and hasattr(scheduler, "sigmas"):
        return "flow"
    if hasattr(scheduler, "precondition_outputs") and "sigma_data" in scheduler.config:
        return "edm"
    if hasattr(scheduler, "alphas_cumprod") and "prediction_type" in scheduler.config:
        return "vp"
    raise UnsupportedScheduler(f"{name}: not a VP (alphas_cumprod), flow-matching or EDM scheduler; "
                               "lossfloor maps DDPM/DDIM-style, FlowMatchEuler and EDMEuler schedulers")


def vp_alpha_bar(scheduler) -> Tensor:
    """The scheduler's own alphas_cumprod in float64, with a zero-SNR terminal value replaced (see top)."""
    name, prediction = type(scheduler).__name__, scheduler.config["prediction_type"]
    abar = torch.as_tensor(scheduler.alphas_cumprod).to(torch.float64).clone()
    if not torch.isfinite(abar).all() or (abar > 1).any() or (abar < 0).any():
        raise UnsupportedScheduler(f"{name}: alphas_cumprod outside [0, 1]")
    if abar[-1] == 0 or scheduler.config.get("rescale_betas_zero_snr"):  # Euler stores 2**-24 there
        if prediction == "epsilon":
            raise UnsupportedScheduler(
                f"{name}: rescale_betas_zero_snr with prediction_type epsilon: at alpha_bar_T = 0 an epsilon "
                "prediction determines no x0 (step() divides by zero); use v_prediction or sample")
        # diffusers' Euler/DPM-Solver/UniPC stand-in, or below the previous level where that is smaller.
        abar[-1] = min(ZERO_SNR_ALPHA_BAR, float(abar[-2] ** 2 / abar[-3]))
    if (abar <= 0).any() or (abar[1:] >= abar[:-1]).any():
        raise UnsupportedScheduler(f"{name}: alphas_cumprod must be positive and strictly decreasing")
    return abar


def objective_from_scheduler(scheduler_or_config, *, weighting_scheme: str = "logit_normal",
                             logit_mean: float = 0.0, logit_std: float = 1.0, p_mean: float = -1.2,
                             p_std: float = 1.2) -> Objective:
    """The lossfloor `Objective` a diffusers scheduler trains with (see the module docstring).

    ``weighting_scheme``, ``logit_mean`` and ``logit_std`` are the SD3/Flux scripts' options (flow only);
    ``p_mean`` and ``p_std`` EDM's log-normal (EDM only)."""
    scheduler = load_scheduler(scheduler_or_config)
    name, config, family = type(scheduler).__name__, scheduler.config, scheduler_family(scheduler)
    prediction = config.get("prediction_type", "flow")
    if family == "vp":
        if prediction not in TARGET_OF_PREDICTION:
            raise UnsupportedScheduler(f"{name}: prediction_type {prediction!r} is not one of "
                                       f"{', '.join(TARGET_OF_PREDICTION)}")
        abar = vp_alpha_bar(scheduler)
        schedule = config.get("beta_schedule", "custom") if config.get("trained_betas") is None else "trained"
        label = f"{name}/{schedule}{'/zero-snr' if config.get('rescale_betas_zero_snr') else ''}/{prediction}"
        return Objective(label, Discrete(abar, label), TARGET_OF_PREDICTION[prediction],
                         DiscreteUniformT(len(abar)))
    if family == "flow":
        shift = _flow_shift(scheduler)
        if weighting_scheme == "logit_normal":
            time_dist = LogSigmaNormal(math.log(shift) - logit_mean, logit_std)  # t = sigmoid(u) on flow
        elif weighting_scheme == "none" and shift == 1:
            time_dist = UniformT(0.0, 1.0)
        else:
            raise UnsupportedScheduler(
                f"{name}: weighting_scheme {weighting_scheme!r} at shift {shift:g} is not mapped; use "
                f"{' or '.join(FLOW_WEIGHTING)} (the latter at shift 1 only)")
        label = f"{name}/shift={shift:g}/{weighting_scheme}"
        return Objective(label, Flow(), "velocity", time_dist)
    if prediction not in ("epsilon", "v_prediction"):
        raise UnsupportedScheduler(f"{name}: prediction_type {prediction!r}; EDM schedulers take epsilon "
                                   "(F) or v_prediction (-F)")
    label = f"{name}/sigma_data={config['sigma_data']:g}/{prediction}"
    return Objective(label, VE(), "F", LogSigmaNormal(p_mean, p_std),
                     precond=Preconditioning(config["sigma_data"]))


def _flow_shift(scheduler) -> float:
    """The static shift the scheduler's training sigmas use (1 with dynamic shifting, as at its init)."""
    name, config = type(scheduler).__name__, scheduler.config
    if config.get("invert_sigmas"):
        raise UnsupportedScheduler(f"{name}: invert_sigmas is not mapped")
    if config.get("shift_terminal"):
        raise UnsupportedScheduler(f"{name}: shift_terminal is not mapped")
    return 1.0 if config.get("use_dynamic_shifting") else float(config.get("shift", 1.0))


def training_sigmas(scheduler, objective: Objective) -> Tensor | None:
    """VE noise levels of the scheduler's discrete training grid (ascending, finite); None if continuous."""
    family = scheduler_family(scheduler)
    if family == "vp":
        return objective.atoms()
    if family == "flow":
        s = torch.as_tensor(scheduler.sigmas).to(torch.float64)
        s = s[(s > 0) & (s < 1)]
        return torch.sort(objective.process.ve_sigma(s)).values  # flow time t is the scheduler's sigma
    return None


# --------------------------------------------------------------------------------------------
# Models -> x0-denoisers.
# --------------------------------------------------------------------------------------------


class DiffusersDenoiser(nn.Module):
    """A diffusers model + scheduler as lossfloor's x0-denoiser ``D(x~, sigma)`` in VE coordinates."""

    def __init__(self, model: nn.Module, scheduler, objective: Objective | None = None,
                 clip_sample: bool = False):
        super().__init__()
        self.model, self.scheduler = model, load_scheduler(scheduler)
        self.family = scheduler_family(self.scheduler)
        self.objective = objective or objective_from_scheduler(self.scheduler)
        self.steps = int(self.scheduler.config.get("num_train_timesteps", 1000))
        self.sign = -1.0 if (self.family == "edm"
                             and self.scheduler.config["prediction_type"] == "v_prediction") else 1.0
        self.clip = float(self.scheduler.config.get("clip_sample_range", 1.0)) if clip_sample else None

    def timestep(self, t: Tensor, sigma: Tensor) -> Tensor:
        """The model's timestep input at process time t / VE level sigma, in the scheduler's convention."""
        if self.family == "vp":
            k = t * self.steps - 1
            return torch.where((k - k.round()).abs() < 1e-6, k.round(), k)
        if self.family == "flow":
            return t * self.steps
        return torch.as_tensor(self.scheduler.precondition_noise(sigma.float()), dtype=torch.float64)

    def forward(self, x_tilde: Tensor, sigma) -> Tensor:
        """x0 estimate from VE coordinates x~ = x0 + sigma * eps (sigma a scalar or per sample)."""
        obj = self.objective
        sigma = torch.as_tensor(sigma, dtype=torch.float64).cpu()
        sigma = sigma.expand(len(x_tilde)) if sigma.dim() == 0 else sigma
        t, x_t = process_input(obj.process, x_tilde, sigma)
        x_in = per_sample(obj.precond.c_in(sigma), x_t) * x_t if self.family == "edm" else x_t
        param = next(self.model.parameters())
        timestep = self.timestep(t, sigma).to(device=param.device, dtype=torch.float32)
        out = self.model(x_in.to(param.dtype), timestep).sample.to(x_tilde.dtype)
        if out.shape[1] == 2 * x_tilde.shape[1]:  # learned variance: the mean half, as step() does
            out = out[:, : x_tilde.shape[1]]
        x0 = x0_from_prediction(obj.target, obj.process, t, x_t, self.sign * out, obj.precond)
        return x0 if self.clip is None else x0.clamp(-self.clip, self.clip)


def snap_to_training_levels(denoiser: DiffusersDenoiser, sigmas) -> np.ndarray:
    """Each level moved to the nearest (in log sigma) of the scheduler's training levels, duplicates
    dropped; unchanged for a continuous scheduler."""
    sigmas = np.asarray(sigmas, dtype=float)
    trained = training_sigmas(denoiser.scheduler, denoiser.objective)
    if trained is None:
        return sigmas
    trained = trained.numpy()
    nearest = np.abs(np.log(trained)[None, :] - np.log(sigmas)[:, None]).argmin(1)
    return np.unique(trained[nearest])


def sigma_grid(denoiser: DiffusersDenoiser, sigma_min: float, sigma_max: float, levels: int) -> np.ndarray:
    """`levels` levels geometric in [sigma_min, sigma_max] (clipped to the scheduler's training range),
    snapped to its training levels."""
    trained = training_sigmas(denoiser.scheduler, denoiser.objective)
    if trained is not None:
        inside = trained[(trained >= sigma_min) & (trained <= sigma_max)]
        if len(inside) == 0:
            raise InputError(f"no training noise level of {denoiser.objective.name} in [{sigma_min:g}, "
                             f"{sigma_max:g}]; its levels span [{trained.min():.3g}, {trained.max():.3g}]")
        sigma_min, sigma_max = float(inside.min()), float(inside.max())
    return snap_to_training_levels(denoiser, np.geomspace(sigma_min, sigma_max, levels))


# --------------------------------------------------------------------------------------------
# save_pretrained folders.
# --------------------------------------------------------------------------------------------


@dataclass
class DiffusersModel:
    """A model and scheduler read from a save_pretrained folder, with the objective they map to."""

    path: Path
    model: nn.Module
    scheduler: SchedulerMixin
    objective: Objective
    model_dir: Path
    scheduler_dir: Path

    def denoiser(self, device=None, clip_sample: bool = False) -> DiffusersDenoiser:
        """The x0-denoiser, in eval mode, on `device`."""
        if device is not None:
            self.model.to(device)
        return DiffusersDenoiser(self.model.eval(), self.scheduler, self.objective, clip_sample)

    def describe(self) -> dict:
        """What was loaded and how it is read (for result files)."""
        config = self.model.config
        return {"path": str(self.path), "model_class": type(self.model).__name__,
                "scheduler_class": type(self.scheduler).__name__,
                "scheduler_config": {k: v for k, v in dict(self.scheduler.config).items()
                                     if not k.startswith("_")},
                "sample_size": config.get("sample_size"), "in_channels": config.get("in_channels"),
                "objective": self.objective.name, "target": self.objective.target}


def _folder_with(root: Path, names, file: str) -> Path | None:
    return next((root / n for n in names if (root / n / file).is_file()), None)


def load_diffusers(path, **objective_options) -> DiffusersModel:
    """A pipeline folder (model_index.json, unet/, scheduler/) or a unet/ + scheduler/ pair written by
    save_pretrained, read from disk only; ValueError with a one-line reason otherwise."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"--diffusers {path}: not a folder")
    scheduler_dir = _folder_with(root, ("scheduler", "."), "scheduler_config.json")
    model_dir = _folder_with(root, MODEL_FOLDERS, "config.json")
    if scheduler_dir is None or model_dir is None:
        missing = "scheduler/scheduler_config.json" if scheduler_dir is None else "unet/config.json"
        raise InputError(f"--diffusers {path}: no {missing}; expected a save_pretrained pipeline folder "
                         "or a unet/ + scheduler/ pair")
    scheduler = load_scheduler(scheduler_dir)
    objective = objective_from_scheduler(scheduler, **objective_options)
    config = read_config(model_dir / "config.json", "model config.json")
    name = config["_class_name"]
    if name not in SUPPORTED_MODELS:
        raise InputError(f"--diffusers {model_dir}: model class {name!r} is not supported; lossfloor calls "
                         f"unconditional models as model(x_t, timestep): {', '.join(SUPPORTED_MODELS)}")
    if config.get("num_class_embeds") or config.get("class_embed_type"):
        raise InputError(f"--diffusers {model_dir}: a class-conditional {name}; lossfloor diagnoses "
                         "unconditional models")
    cls = getattr(import_diffusers(), name)
    count_parameters(cls, config, str(model_dir / "config.json"))  # on the meta device: size checked first
    return DiffusersModel(root, load_weights(cls, model_dir), scheduler, objective, model_dir, scheduler_dir)



def check_data(loaded: DiffusersModel, shape, x: Tensor, option: str = "--data") -> None:
    """ValueError unless data of `shape` (C, H, W) with values x is what the model was trained on:
    in_channels, sample_size and diffusers' [-1, 1] image range (clip_sample_range when clipping)."""
    config, where = loaded.model.config, f"{option}: the model in {loaded.model_dir}"
    shape = tuple(int(s) for s in shape)
    size = config.get("sample_size")
    size = None if size is None else (tuple(size) if isinstance(size, (list, tuple)) else (size, size))
    expected = (config.get("in_channels"), *(size or ("H", "W")))
    if len(shape) != 3 or shape[0] != config.get("in_channels") or (size and shape[1:] != size):
        raise InputError(f"{where} expects images of shape {expected}, but the data has shape {shape}")
    out = config.get("out_channels", shape[0])
    if out not in (shape[0], 2 * shape[0]):
        raise InputError(f"{where} outputs {out} channels for {shape[0]} input channels")
    scheduler_config = loaded.scheduler.config
    r = float(scheduler_config.get("clip_sample_range", 1.0)) if scheduler_config.get("clip_sample") else 1.0
    lo, hi = float(x.min()), float(x.max())
    if lo < -r * (1 + 1e-4) or hi > r * (1 + 1e-4) or lo >= 0:
        raise InputError(f"{where} was trained on images scaled to [-{r:g}, {r:g}] (diffusers' convention), "
                         f"but the data spans [{lo:.3g}, {hi:.3g}]; rescale it to [-{r:g}, {r:g}]")

