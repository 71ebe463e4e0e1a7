"""`lossfloor encode`: images -> a latent .npz (each image's latent_dist mean and std) with a diffusers VAE.

The output is the latent format of data/latents.py (``mean``, ``std``, ``labels``, and ``mean_test``,
``std_test``, ``labels_test`` when the data has a test split), in the units the diffusion model sees
(`integrations.vae.scaled_latents`), plus a record of how it was made (``vae_scaling_factor``,
``vae_shift_factor``; ``channel_mean``, ``channel_std`` with --normalise).  Written atomically (a temporary
file, then a rename): an interrupted run leaves nothing behind.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lossfloor.app.checks import check_out_path
from lossfloor.app.common import resolve_device
from lossfloor.app.diagnose import load_test_split
from lossfloor.core.errors import InputError
from lossfloor.core.files import atomic_write_bytes
from lossfloor.data.dataset import Dataset
from lossfloor.data.load import load_dataset
from lossfloor.integrations.vae import (
    NORMALISED_STD,
    VAE,
    check_images,
    load_vae,
    raw_latents,
    scaled_latents,
)


@dataclass(frozen=True)
class EncodeSettings:
    """`lossfloor encode`: the VAE folder, the images, the output file and the encoding options."""

    vae: str = ""
    data: str = "digits"
    out: str = "latents.npz"
    data_dir: str | None = None
    n: int | None = None
    data_seed: int = 0
    normalise: bool = False
    batch_size: int = 64
    device: str = "cpu"
    force: bool = False


@dataclass
class EncodeRun:
    """A checked encoding: the VAE, the splits to encode and where to write."""

    settings: EncodeSettings
    vae: VAE
    splits: dict
    device: torch.device
    out: Path

    def header(self) -> list[str]:
        v = self.vae.describe()
        units = ("EDM2 per-channel normalisation" if self.settings.normalise else
                 f"(z - {v['shift_factor']:g}) * {v['scaling_factor']:g}")
        return [f"vae:   {v['path']} ({v['class']}, {v['in_channels']} -> {v['latent_channels']} channels)",
                "data:  " + ", ".join(f"{k} N = {len(d)}" for k, d in self.splits.items())
                + f" of {next(iter(self.splits.values())).name}",
                f"units: {units}"]


@dataclass
class EncodeResult:
    files: list[Path]
    shape: tuple
    mean_std: float
    record: dict

    def report(self) -> list[str]:
        units = self.record["units"]
        return [f"latents: shape {self.shape} per image, mean std {self.mean_std:.4g} ({units})"]


def prepare_encode(s: EncodeSettings) -> EncodeRun:
    """Check the options, the output file, the VAE and the images; nothing is written."""
    if not s.vae:
        raise InputError("give --vae: a diffusers AutoencoderKL save_pretrained folder")
    out = Path(s.out)
    if out.suffix != ".npz":
        raise InputError(f"--out {out}: the latents are written as an .npz file")
    if out.is_dir():
        raise InputError(f"--out {out}: is a folder, not a file")
    check_out_path(out, file=True)
    if out.exists() and not s.force:
        raise InputError(f"--out {out} already exists; pass --force to overwrite")
    if s.batch_size < 1:
        raise InputError(f"--batch-size must be positive, got {s.batch_size}")
    device = resolve_device(s.device)
    splits = {"train": load_dataset(s.data, data_dir=s.data_dir, n=s.n, seed=s.data_seed)}
    test = load_test_split(lambda: load_dataset(s.data, data_dir=s.data_dir, split="test",
                                                seed=s.data_seed))
    if test is not None:
        splits["test"] = test
    for ds in splits.values():
        _check_images(ds)
    vae = load_vae(s.vae)
    for ds in splits.values():
        check_images(vae, ds.x)
    return EncodeRun(s, vae, splits, device, out)


def _check_images(ds: Dataset) -> None:
    if ds.std is not None:
        raise InputError(f"--data {ds.name}: already latents (mean/std); encode takes images")
    if not ds.is_image:
        raise InputError(f"--data {ds.name}: encode takes images (N, C, H, W), got points of shape "
                         f"{tuple(ds.shape)}")


def run_encode(run: EncodeRun, progress: bool = True) -> EncodeResult:
    """Encode every split, scale (or normalise with the train split's statistics) and write the .npz."""
    s, arrays = run.settings, {}
    raw = {k: raw_latents(run.vae, ds.x, s.batch_size, run.device, progress, f"encode ({k})")
           for k, ds in run.splits.items()}
    mean, std, record = scaled_latents(run.vae, *raw["train"], normalise=s.normalise)
    arrays.update(mean=mean, std=std)
    if "test" in raw:
        m, sd = raw["test"]
        if s.normalise:  # the train split's channel statistics
            shape = (1, -1) + (1,) * (m.ndim - 2)
            c_mean, c_std = (np.asarray(record[k]).reshape(shape) for k in ("channel_mean", "channel_std"))
            scale = NORMALISED_STD / c_std
            arrays.update(mean_test=((m - c_mean) * scale).astype(np.float32),
                          std_test=(sd * scale).astype(np.float32))
        else:
            arrays["mean_test"], arrays["std_test"], _ = scaled_latents(run.vae, m, sd)
    for k, ds in run.splits.items():
        if ds.labels is not None:
            arrays["labels" if k == "train" else "labels_test"] = ds.labels.numpy().astype(np.int64)
    arrays["vae_scaling_factor"] = np.float64(run.vae.scaling_factor)
    arrays["vae_shift_factor"] = np.float64(run.vae.shift_factor)
    if s.normalise:
        arrays["channel_mean"] = np.asarray(record["channel_mean"])
        arrays["channel_std"] = np.asarray(record["channel_std"])
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    run.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run.out, buffer.getvalue())
    return EncodeResult([run.out], tuple(mean.shape[1:]), float(std.mean()), record)
