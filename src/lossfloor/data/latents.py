"""Stochastic latents: an .npz with each point's encoder `mean` and `std` (or `logvar`), as a Gaussian-mixture
dataset (every point n is N(mean_n, diag std_n^2), the distribution EDM2-style trainers sample from).

Members: ``mean`` and ``std`` or ``logvar`` (std = exp(logvar / 2)) of the same shape (N, ...), optional
integer ``labels`` (or ``y``), optional ``scale`` and ``shift`` (scalars, or arrays broadcastable to one
point, a per-channel vector for (N, C, H, W)): the data the model sees is (mean - shift) * scale with
std * |scale|, and both are recorded in `Dataset.scaling` and the fingerprint.  A test split is
``mean_test`` with ``std_test`` / ``logvar_test`` (and ``labels_test``).  Never unpickled.  Point data is
the case std = 0: a file whose std is 0 everywhere loads as points.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from lossfloor.core.errors import InputError, reason
from lossfloor.data.arrays import npz_member
from lossfloor.data.dataset import Dataset, NoTestSplit, make_dataset

LATENT_KEYS = ("mean", "std", "logvar")


def is_latent_file(name) -> bool:
    """An .npz holding a `mean` array (and so, by this format, a Gaussian-mixture dataset)."""
    path = Path(str(name))
    if path.suffix != ".npz" or not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return "mean.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def load_latents(path, split: str = "train", *, n: int | None = None, seed: int = 0,
                 flip: bool = False) -> Dataset:
    """The Gaussian-mixture dataset of a latent .npz (module docstring); `n` picks a random subset (numpy
    seed `seed`), `flip` appends every latent mirrored along its last axis (the latent-space mirror, not the
    encoding of the mirrored image)."""
    path = Path(path)
    try:
        mean, std, labels, scale, shift, std_key = _read(path, split)
    except InputError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        raise InputError(f"{path}: damaged .npz archive ({reason(err)})") from None
    mean, std = _scaled(mean, std, scale, shift, path)
    if n is not None:
        if n > len(mean):
            raise InputError(f"asked for {n} points but {path} has only {len(mean)}")
        idx = np.sort(np.random.default_rng(seed).choice(len(mean), n, replace=False))
        mean, std, labels = mean[idx], std[idx], None if labels is None else labels[idx]
    if flip:
        if mean.ndim != 4:
            raise InputError(f"{path}: --flip needs latents of shape (N, C, H, W), not {mean.shape}")
        mean, std = np.concatenate([mean, mean[..., ::-1]]), np.concatenate([std, std[..., ::-1]])
        labels = None if labels is None else np.concatenate([labels, labels])
    scaling = {"kind": "latent", "formula": "(mean - shift) * scale, std * |scale|",
               "scale": _listed(scale), "shift": _listed(shift), "std_from": std_key}
    ds = make_dataset(str(path), split, mean, labels, scaling, path)
    ds.flip = flip
    if np.any(std > 0):
        ds.std = torch.as_tensor(np.ascontiguousarray(std, dtype=np.float32))
    ds.fingerprint = mixture_fingerprint(ds.x, ds.std, scaling)
    return ds


def mixture_fingerprint(mean: torch.Tensor, std: torch.Tensor | None, scaling: dict) -> str:
    """sha256 of the means' and stds' shapes and float32 bytes and of the scaling (scale and shift)."""
    digest = hashlib.sha256(b"gaussian-mixture")
    for arr in (mean, std):
        if arr is not None:
            data = np.ascontiguousarray(arr.detach().cpu().numpy(), dtype=np.float32)
            digest.update(repr(tuple(data.shape)).encode())
            digest.update(data.tobytes())
    digest.update(json.dumps(scaling, sort_keys=True).encode())
    return digest.hexdigest()


def _read(path: Path, split: str):
    suffix = "" if split == "train" else "_test"
    with np.load(path, allow_pickle=False) as arrays:
        keys = list(arrays.keys())
        if f"mean{suffix}" not in arrays:
            error = InputError if split == "train" else NoTestSplit
            raise error(f"{path}: no array named 'mean{suffix}' (holds {', '.join(keys) or 'nothing'})")
        has = [k for k in ("std", "logvar") if f"{k}{suffix}" in arrays]
        if len(has) != 1:
            raise InputError(f"{path}: a latent file needs exactly one of 'std{suffix}' and 'logvar{suffix}' "
                             f"next to 'mean{suffix}' (holds {', '.join(keys)})")
        mean = _numbers(npz_member(arrays, f"mean{suffix}", path), f"mean{suffix}", path)
        spread = _numbers(npz_member(arrays, f"{has[0]}{suffix}", path), f"{has[0]}{suffix}", path)
        lkey = next((k for k in (f"labels{suffix}", f"y{suffix}") if k in arrays), None)
        labels = npz_member(arrays, lkey, path) if lkey else None
        scale = _numbers(npz_member(arrays, "scale", path), "scale", path) if "scale" in arrays else None
        shift = _numbers(npz_member(arrays, "shift", path), "shift", path) if "shift" in arrays else None
    if mean.shape != spread.shape:
        raise InputError(f"{path}: 'mean' has shape {mean.shape} but '{has[0]}' has shape {spread.shape}; "
                         "they must match")
    if mean.ndim < 2 or len(mean) == 0:
        raise InputError(f"{path}: 'mean' must have shape (N, ...) with N >= 1, got {mean.shape}")
    _finite(mean, "mean", path)
    _finite(spread, has[0], path)
    if has[0] == "std":
        if (spread < 0).any():
            bad = np.nonzero((spread < 0).reshape(len(spread), -1).any(1))[0]
            raise InputError(f"{path}: 'std' is negative in {len(bad)} points (the first is row {bad[0]}); "
                             "a standard deviation is >= 0")
        std = spread
    else:
        std = np.exp(0.5 * spread.astype(np.float64))
    if labels is not None and (labels.shape != (len(mean),) or not np.issubdtype(labels.dtype, np.integer)):
        raise InputError(f"{path}: labels must be {len(mean)} integers, got {labels.dtype} of shape "
                         f"{labels.shape}")
    return mean, std, labels, scale, shift, has[0]


def _numbers(arr: np.ndarray, key: str, path: Path) -> np.ndarray:
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{path}: '{key}' must be numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _finite(arr: np.ndarray, key: str, path: Path) -> None:
    bad = ~np.isfinite(arr).reshape(len(arr), -1).all(1)
    if bad.any():
        raise InputError(f"{path}: '{key}' has NaN or Inf in {int(bad.sum())} points (the first is row "
                         f"{int(np.nonzero(bad)[0][0])})")


def _scaled(mean, std, scale, shift, path):
    """(mean - shift) * scale and std * |scale|; a 1-D scale/shift of length C applies per channel."""
    shape = mean.shape[1:]
    out = []
    for name, value, default in (("scale", scale, 1.0), ("shift", shift, 0.0)):
        if value is None:
            out.append(np.float64(default))
            continue
        if not np.isfinite(value).all() or (name == "scale" and (value == 0).any()):
            raise InputError(f"{path}: '{name}' must be finite{' and nonzero' if name == 'scale' else ''}")
        if value.ndim == 1 and len(shape) == 3 and len(value) == shape[0] != 1:
            value = value[:, None, None]  # per channel
        try:
            np.broadcast_shapes(value.shape, shape)
            if len(np.broadcast_shapes(value.shape, shape)) != len(shape):
                raise ValueError
        except ValueError:
            raise InputError(f"{path}: '{name}' of shape {value.shape} does not broadcast to a point of "
                             f"shape {shape}") from None
        out.append(value)
    scale, shift = out
    return ((mean - shift) * scale).astype(np.float32), (std * np.abs(scale)).astype(np.float32)


def _listed(value):
    """A scale/shift as recorded in output files: None, a number or a nested list."""
    if value is None:
        return None
    return float(value) if np.ndim(value) == 0 else np.asarray(value).tolist()
