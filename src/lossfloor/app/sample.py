"""`lossfloor sample`: draw images from a checkpoint with the shared x0-denoiser sampler."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lossfloor.app.checks import check_out_path
from lossfloor.app.common import SIGMA_GRID, resolve_device
from lossfloor.core.errors import InputError
from lossfloor.core.files import atomic_write_bytes
from lossfloor.evaluate.sampling import karras_sigmas
from lossfloor.evaluate.sampling import sample as draw
from lossfloor.train.checkpoint import load_checkpoint
from lossfloor.train.trainer import reload_data

# -- sample -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleSettings:
    """`lossfloor sample`: checkpoint, sampler and output options."""

    checkpoint: str = ""
    n: int = 64
    steps: int = 18
    sampler: str = "heun"
    sigma_min: float = SIGMA_GRID[0]
    sigma_max: float = SIGMA_GRID[1]
    seed: int = 0
    raw_weights: bool = False
    device: str = "cpu"
    out: str = "out/samples.png"
    npy: bool = False
    force: bool = False


@dataclass
class SampleResult:
    files: list[Path]


def run_sample(s: SampleSettings, progress: bool = True) -> SampleResult:
    """Draw samples with the checkpoint's denoiser and write a PNG (and with `npy` the array)."""
    from lossfloor.plots.figures import plot_samples

    if s.n < 1:
        raise InputError(f"--n must be positive, got {s.n}")
    sigmas = karras_sigmas(s.steps, s.sigma_min, s.sigma_max)
    out = Path(s.out)
    if out.suffix.lower() != ".png":
        raise InputError(f"--out {out}: expected a .png file")
    files = [out] + ([out.with_suffix(".npy")] if s.npy else [])
    existing = [str(p) for p in files if p.exists()]
    if existing and not s.force:
        raise InputError(f"--out: {', '.join(existing)} already exists; pass --force to overwrite")
    for path in files:  # writable folder above it, no dangling symbolic link: checked before sampling
        check_out_path(path, file=True)
    dev = resolve_device(s.device)
    ckpt = load_checkpoint(s.checkpoint)
    reference = None if len(ckpt.model.shape) == 3 else reload_data(ckpt).x[:5000]
    denoiser = ckpt.denoiser(ema=not s.raw_weights, device=dev)
    x = draw(denoiser, (s.n, *ckpt.model.shape), sigmas, method=s.sampler,
             generator=torch.Generator().manual_seed(s.seed), device=dev, progress=progress)
    nonfinite = int((~torch.isfinite(x)).reshape(len(x), -1).any(1).sum())
    if nonfinite:  # never written with exit code 0
        raise InputError(f"{s.checkpoint}: {nonfinite} of {s.n} samples hold NaN or Inf; nothing was written")
    out.parent.mkdir(parents=True, exist_ok=True)
    title = (f"{ckpt.data.get('name', '?')}: {ckpt.objective_name}, step {ckpt.step}, {s.sampler} "
             f"{s.steps} levels, {'raw' if s.raw_weights else 'EMA'} weights")
    plot_samples(x, out, reference, title)
    if s.npy:
        buf = io.BytesIO()
        np.save(buf, x.cpu().numpy())
        atomic_write_bytes(files[1], buf.getvalue())
    return SampleResult(files)
