"""The JSON files of a diffusers save_pretrained folder, checked before diffusers builds anything.

``scheduler_config.json`` and ``unet/config.json`` must be JSON objects naming their class
(``_class_name``).  A scheduler's ``num_train_timesteps`` is an integer from 2 to MAX_TRAIN_TIMESTEPS (3
with ``rescale_betas_zero_snr``, whose terminal level is extrapolated from the two before it):
diffusers allocates its tables from it, so a typo such as 1e13 would otherwise try terabytes.  The noise
parameters lossfloor reads (``shift``, ``sigma_data``, the beta range, ...) must be finite numbers in their
ranges.  Every refusal is one line naming the file and the field (`lossfloor.core.errors.InputError`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from lossfloor.core.errors import InputError
from lossfloor.core.schema import (
    anything,
    list_of,
    mapping,
    number,
    optional,
    read_json,
    string,
    validate,
)

MAX_TRAIN_TIMESTEPS = 100_000  # diffusers' schedulers use 1,000; a table of this many levels is ~1 MB
MAX_MODEL_PARAMETERS = 1 << 30  # 4 GiB of float32 weights, counted on the meta device before any allocation

_POSITIVE = number(positive=True)
_UNIT = number(0, 1)
SCHEDULER_FIELDS = {
    "_class_name": string(),
    "num_train_timesteps": optional(number(2, MAX_TRAIN_TIMESTEPS, integer=True), none=False),
    "beta_start": optional(_UNIT, none=False), "beta_end": optional(_UNIT, none=False),
    "trained_betas": optional(list_of(_UNIT, min_len=2)),
    "prediction_type": optional(string()),
    "clip_sample_range": optional(_POSITIVE, none=False),
    "shift": optional(_POSITIVE, none=False), "base_shift": optional(number()),
    "max_shift": optional(number()), "sigma_data": optional(_POSITIVE, none=False),
    "sigma_min": optional(_POSITIVE), "sigma_max": optional(_POSITIVE),
}
MODEL_FIELDS = {"_class_name": string()}


def read_config(path, what: str) -> dict:
    """A diffusers JSON config (a JSON object naming its class); InputError naming the file otherwise."""
    path = Path(path)
    config = read_json(path, what)
    validate(config, mapping({"_class_name": string()}, name=f"a {what} (a JSON object)"), str(path))
    return config


def check_scheduler_config(config, where: str) -> None:
    """A scheduler config's types and ranges (see the module docstring), before diffusers sees it."""
    validate(config, mapping(SCHEDULER_FIELDS, values=anything, name="a scheduler config (a JSON object)"),
             where)
    steps = config.get("num_train_timesteps", 1000)
    betas = config.get("trained_betas")
    if betas is not None and len(betas) != steps:
        raise InputError(f"{where}: field 'trained_betas': expected {steps} values (num_train_timesteps), "
                         f"got {len(betas)}")
    if config.get("rescale_betas_zero_snr") and steps < 3:
        raise InputError(f"{where}: field 'num_train_timesteps': expected an integer >= 3 with "
                         f"rescale_betas_zero_snr (its last level is extrapolated from two before it), got "
                         f"{steps}")
    if "beta_start" in config and "beta_end" in config and not config["beta_start"] < config["beta_end"]:
        raise InputError(f"{where}: fields 'beta_start' and 'beta_end': expected beta_start < beta_end, got "
                         f"{config['beta_start']} and {config['beta_end']}")


def count_parameters(cls, config: dict, where: str) -> int:
    """The parameter count of `cls.from_config(config)` built on the meta device (nothing allocated);
    InputError naming `where` if diffusers cannot build it or it exceeds MAX_MODEL_PARAMETERS."""
    try:
        with torch.device("meta"):
            model = cls.from_config(config)
    except Exception as err:  # noqa: BLE001 - diffusers raises TypeError, ValueError, KeyError, ... on bad configs
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"{where}: not a valid {cls.__name__} configuration ({first})") from None
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_MODEL_PARAMETERS:
        raise InputError(f"{where}: this {cls.__name__} would have {count:,} parameters; at most "
                         f"{MAX_MODEL_PARAMETERS:,}")
    return count


@contextlib.contextmanager
def quiet():
    """diffusers' own log lines and progress bars kept off the terminal (a refusal stays one line)."""
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        logging.enable_progress_bar()


def load_weights(cls, model_dir: Path, option: str = "--diffusers") -> nn.Module:
    """`cls.from_pretrained(model_dir)` (diffusers reads .bin with weights_only=True, .safetensors as data),
    strictly: every weight present, none unexpected or of another shape, all finite."""
    try:
        with quiet():
            model, info = cls.from_pretrained(model_dir, local_files_only=True, low_cpu_mem_usage=False,
                                              output_loading_info=True)
    except Exception as err:  # noqa: BLE001 - diffusers raises OSError, ValueError, RuntimeError, ... on bad files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{option} {model_dir}: could not load the {cls.__name__} weights ({first})") \
            from None
    for key, problem in (("missing_keys", "lacks"), ("unexpected_keys", "has unexpected"),
                         ("mismatched_keys", "has wrongly shaped")):
        names = [k[0] if isinstance(k, tuple) else k for k in info.get(key) or []]
        if names:
            raise InputError(f"{option} {model_dir}: the weights file {problem} weights "
                             f"{', '.join(names[:3])}{' ...' if len(names) > 3 else ''} for its "
                             f"{cls.__name__} (diffusers would initialise them at random)")
    bad = next((n for n, t in (*model.named_parameters(), *model.named_buffers())
                if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if bad is not None:
        raise InputError(f"{option} {model_dir}: weight {bad} holds NaN or infinite values")
    return model
