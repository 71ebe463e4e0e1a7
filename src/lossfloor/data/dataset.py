"""`Dataset`: float32 rows, labels, the scaling applied and a stable fingerprint; subsets and flips."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lossfloor.core.errors import InputError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_HINT = ("install it with `sudo apt-get update && sudo apt-get install dataset-fashion-mnist` "
                "or pass --data-dir DIR holding the IDX files")
SPLITS = ("train", "test")
UINT8_SCALING = {"kind": "affine", "formula": "x / 127.5 - 1", "scale": 1 / 127.5, "offset": -1.0,
                 "input_range": [0, 255], "output_range": [-1.0, 1.0]}


class NoTestSplit(InputError):
    """The dataset has no test split (an image folder, a .npy file, an .npz without x_test)."""


@dataclass
class Dataset:
    """Preprocessed float32 data points (N, *shape), optional integer labels and their provenance."""

    name: str
    split: str
    x: torch.Tensor
    labels: torch.Tensor | None
    shape: tuple
    scaling: dict
    fingerprint: str
    source: str = ""
    flip: bool = False
    classes: list = field(default_factory=list)
    std: torch.Tensor | None = None  # per-point std: a Gaussian mixture (stochastic latents, data/latents.py)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def rows(self) -> torch.Tensor:
        """The data as an (N, D) matrix."""
        return self.x.reshape(len(self.x), -1)

    def std_rows(self) -> torch.Tensor | None:
        """A Gaussian mixture's per-point standard deviations as an (N, D) matrix; None for point data."""
        return None if self.std is None else self.std.reshape(len(self.std), -1)

    def describe(self) -> dict:
        """Where the data came from, for output files."""
        return {"name": self.name, "split": self.split, "n": len(self), "shape": list(self.shape),
                "source": self.source, "flip": self.flip, "labels": self.labels is not None,
                "classes": self.classes, "fingerprint": self.fingerprint,
                **({"mixture": True, "mean_std": float(self.std.double().mean())} if self.std is not None
                   else {})}


def data_label(info) -> str:
    """A dataset as a person names it, from `Dataset.describe()`'s dict (as saved in curves and checkpoints):
    "ring (train, N = 400)", "fashion (train, N = 60,000, flipped)"; "unrecorded data" without one."""
    if not isinstance(info, dict) or not info.get("name"):
        return "unrecorded data"
    extra = [str(info.get("split") or "train")]
    extra += [f"N = {info['n']:,}"] if isinstance(info.get("n"), int) else []
    extra += ["flipped"] if info.get("flip") else []
    return f"{info['name']} ({', '.join(extra)})"


def fingerprint(x: torch.Tensor) -> str:
    """sha256 of the shape and float32 bytes of the preprocessed data."""
    arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    digest = hashlib.sha256(repr(tuple(arr.shape)).encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


def check_shape(name, shape) -> None:
    """Data must be (N, ...) with N >= 1 points of at least one value each."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        raise InputError(f"{name}: data must have shape (N, ...), got {shape}")
    if shape[0] == 0 or math.prod(shape[1:]) == 0:
        raise InputError(f"{name}: no data: shape {shape} has no {'points' if shape[0] == 0 else 'values'}")


def make_dataset(name, split, x, labels, scaling, source, classes=()) -> Dataset:
    x = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    check_shape(name, x.shape)
    finite = torch.isfinite(x).reshape(len(x), -1).all(1)
    if not finite.all():
        bad = int((~finite).sum())
        raise InputError(f"{name}: {bad} data points contain NaN or Inf (the first is row "
                         f"{int((~finite).nonzero()[0])})")
    if len(x) > 1 and bool((x.amax(0) == x.amin(0)).all()):
        raise InputError(f"{name}: all {len(x)} data points are identical (zero variance): nothing to learn "
                         "and the optimal loss is 0 at every sigma")
    if labels is not None:
        labels = torch.as_tensor(np.asarray(labels).astype(np.int64))
        if labels.shape != (len(x),):
            raise InputError(f"{name}: {tuple(labels.shape)} labels for {len(x)} data points")
    return Dataset(name=name, split=split, x=x, labels=labels, shape=tuple(x.shape[1:]), scaling=scaling,
                   fingerprint=fingerprint(x), source=str(source), classes=list(classes))


def subsample(x, labels, n, seed):
    if n is None:
        return x, labels
    if n > len(x):
        raise InputError(f"asked for {n} points but the dataset has only {len(x)}")
    idx = np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))
    return x[idx], None if labels is None else labels[idx]


def with_mirrors(ds: Dataset) -> Dataset:
    if not ds.is_image:
        raise InputError(f"{ds.name}: --flip needs images (N, C, H, W), not points of shape {ds.shape}")
    x = torch.cat([ds.x, ds.x.flip(-1)])
    labels = None if ds.labels is None else torch.cat([ds.labels, ds.labels])
    return Dataset(name=ds.name, split=ds.split, x=x, labels=labels, shape=ds.shape, scaling=ds.scaling,
                   fingerprint=fingerprint(x), source=ds.source, flip=True, classes=ds.classes)
