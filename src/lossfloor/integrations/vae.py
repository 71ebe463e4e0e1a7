"""A diffusers VAE (`AutoencoderKL` save_pretrained folder) -> each image's latent Gaussian (mean, std).

Read from disk only, as `integrations.diffusers` does (``HF_HUB_OFFLINE=1``, ``local_files_only=True``):
weights from ``diffusion_pytorch_model.safetensors`` (data only) or a ``.bin`` that loads with
``torch.load(weights_only=True)``; a pickled ``.bin`` that needs unsafe loading is refused in one line.

`encode_latents` returns ``latent_dist.mean`` and ``latent_dist.std`` in the units the diffusion model
sees: (z - shift_factor) * scaling_factor with std * scaling_factor (the VAE config's factors; shift 0
when absent), or, with ``normalise=True``, EDM2's per-channel normalisation of the raw latents to
``NORMALISED_STD`` (0.5): per channel c the mixture's mean m_c and variance v_c (over points and pixels,
Var of the means plus the mean of std^2), then (z - m_c) * 0.5 / sqrt(v_c).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lossfloor.core.errors import InputError
from lossfloor.integrations.diffusers import import_diffusers
from lossfloor.integrations.diffusers_config import count_parameters, load_weights, read_config

VAE_CLASSES = ("AutoencoderKL",)  # diffusers' VAEs whose encode() returns a latent_dist
VAE_FOLDERS = ("vae", ".")
NORMALISED_STD = 0.5  # EDM2's sigma_data for normalised latents


@dataclass
class VAE:
    """An AutoencoderKL read from a save_pretrained folder (or a pipeline's vae/ subfolder)."""

    path: Path
    model: nn.Module
    config: dict = field(default_factory=dict)

    @property
    def scaling_factor(self) -> float:
        return float(self.config.get("scaling_factor") or 1.0)

    @property
    def shift_factor(self) -> float:
        return float(self.config.get("shift_factor") or 0.0)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.config.get("block_out_channels", (0,))) - 1)

    def describe(self) -> dict:
        c = self.config
        return {"path": str(self.path), "class": type(self.model).__name__,
                "in_channels": c.get("in_channels"), "latent_channels": c.get("latent_channels"),
                "scaling_factor": self.scaling_factor, "shift_factor": self.shift_factor}


def load_vae(path, option: str = "--vae") -> VAE:
    """The AutoencoderKL in `path` (its config.json and weights, or a pipeline's vae/); one-line InputError
    for a missing folder or config, a class that is not a VAE, bad or pickled weights."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{option} {path}: not a folder")
    folder = next((root / n for n in VAE_FOLDERS if (root / n / "config.json").is_file()), None)
    if folder is None:
        raise InputError(f"{option} {path}: no config.json (or vae/config.json); expected an AutoencoderKL "
                         "save_pretrained folder")
    config = read_config(folder / "config.json", "VAE config.json")
    name = config["_class_name"]
    if name not in VAE_CLASSES:
        raise InputError(f"{option} {folder}: model class {name!r} has no latent_dist (not a VAE); encode "
                         f"needs one of {', '.join(VAE_CLASSES)}")
    for key in ("scaling_factor", "shift_factor"):
        value = config.get(key)
        if value is not None and not (isinstance(value, (int, float)) and np.isfinite(value)
                                      and (key == "shift_factor" or value > 0)):
            raise InputError(f"{folder / 'config.json'}: field {key!r}: expected a finite "
                             f"{'positive ' if key == 'scaling_factor' else ''}number, got {value!r}")
    cls = getattr(import_diffusers(), name)
    count_parameters(cls, config, str(folder / "config.json"))
    model = load_weights(cls, folder, option=option)
    return VAE(folder, model.eval(), config)


def check_images(vae: VAE, x: Tensor, option: str = "--data") -> None:
    """Images (N, C, H, W) in [-1, 1] with the VAE's in_channels and sizes its encoder divides evenly."""
    where = f"{option}: the VAE in {vae.path}"
    channels, k = vae.config.get("in_channels", 3), vae.downsampling
    if x.dim() != 4 or x.shape[1] != channels:
        raise InputError(f"{where} encodes images of shape ({channels}, H, W), but the data has shape "
                         f"{tuple(x.shape[1:])}")
    if x.shape[2] % k or x.shape[3] % k:
        raise InputError(f"{where} downsamples by {k}; the images' size {tuple(x.shape[2:])} is not a "
                         "multiple of it")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - 1e-4 or hi > 1 + 1e-4:
        raise InputError(f"{where} encodes images scaled to [-1, 1], but the data spans [{lo:.3g}, {hi:.3g}]")


@torch.no_grad()
def raw_latents(vae: VAE, x: Tensor, batch_size: int = 64, device="cpu", progress: bool = True,
                desc: str = "encode") -> tuple[np.ndarray, np.ndarray]:
    """latent_dist's mean and std of every image in the VAE's raw units (float32), in batches."""
    model = vae.model.to(device)
    means, stds = [], []
    with tqdm(total=len(x), desc=desc, unit="image", disable=not progress) as bar:
        for batch in x.split(batch_size):
            out = model.encode(batch.to(device=device, dtype=next(model.parameters()).dtype))
            dist = getattr(out, "latent_dist", None)
            if dist is None:
                raise InputError(f"--vae {vae.path}: encode() returned no latent_dist (not a VAE)")
            means.append(dist.mean.float().cpu().numpy())
            stds.append(dist.std.float().cpu().numpy())
            bar.update(len(batch))
    return np.concatenate(means), np.concatenate(stds)


def scaled_latents(vae: VAE, mean: np.ndarray, std: np.ndarray, normalise: bool = False):
    """(mean, std, record): the latents in the units the diffusion model sees (module docstring)."""
    if not normalise:
        s, b = vae.scaling_factor, vae.shift_factor
        return ((mean - b) * s).astype(np.float32), (std * s).astype(np.float32), {
            "units": "(z - shift_factor) * scaling_factor", "scaling_factor": s, "shift_factor": b}
    axes = (0, *range(2, mean.ndim))
    m = mean.astype(np.float64).mean(axes)
    v = mean.astype(np.float64).var(axes) + (std.astype(np.float64) ** 2).mean(axes)
    scale = NORMALISED_STD / np.sqrt(np.maximum(v, 1e-30))
    shape = (1, -1) + (1,) * (mean.ndim - 2)
    return (((mean - m.reshape(shape)) * scale.reshape(shape)).astype(np.float32),
            (std * scale.reshape(shape)).astype(np.float32),
            {"units": f"EDM2 per-channel normalisation to std {NORMALISED_STD}", "channel_mean": m.tolist(),
             "channel_std": np.sqrt(v).tolist()})
