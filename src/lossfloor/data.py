"""Datasets: the embedded digits, Fashion-MNIST, .npy/.npz arrays, image folders and 2-D toys.

Every loader returns a `Dataset` whose rows are float32 and finite.  Images are (N, C, H, W) in
[-1, 1] and the preprocessing that was applied is recorded in `Dataset.scaling`.  Splits:

- ``digits``: scikit-learn's 1,797 8x8 digits, a fixed permutation (numpy seed 0) split 80/20:
  1,438 train and 359 test images.
- ``fashion-mnist``: the 60,000 train and 10,000 t10k images of the IDX files.
- 2-D toys: ``train`` and ``test`` are independent draws (different seeds, no shared points), both
  standardised with the per-coordinate mean and std of the train draw.
- arrays: an .npz may hold a test split as ``x_test`` (and ``labels_test``); folders have no test split.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .validation import InputError, reason

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_HINT = ("install it with `sudo apt-get update && sudo apt-get install dataset-fashion-mnist` "
                "or pass --data-dir DIR holding the IDX files")
TOYS = ("gaussian", "clusters", "ring", "swiss-roll", "waves")
BUILTIN = ("digits", "fashion-mnist", *TOYS)
SPLITS = ("train", "test")
TOY_SIZE = 10_000  # points drawn by default: `lossfloor estimate --data ring` finishes in about a minute
DIGITS_TEST_FRACTION = 0.2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
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

    def __len__(self) -> int:
        return len(self.x)

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def rows(self) -> torch.Tensor:
        """The data as an (N, D) matrix."""
        return self.x.reshape(len(self.x), -1)

    def describe(self) -> dict:
        """Where the data came from, for output files."""
        return {"name": self.name, "split": self.split, "n": len(self), "shape": list(self.shape),
                "source": self.source, "flip": self.flip, "labels": self.labels is not None,
                "classes": self.classes, "fingerprint": self.fingerprint}


def fingerprint(x: torch.Tensor) -> str:
    """sha256 of the shape and float32 bytes of the preprocessed data."""
    arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    digest = hashlib.sha256(repr(tuple(arr.shape)).encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


def load_dataset(name: str = "digits", *, data_dir=None, split: str = "train", flip: bool = False,
                 n: int | None = None, seed: int = 0) -> Dataset:
    """A dataset by name or path, optionally subsampled to `n` points (seeded) and x-flipped.

    For the 2-D toys `n` is the number of points drawn (default TOY_SIZE = 10,000) and `seed` seeds the draw;
    for everything else `n` picks a random subset (numpy seed `seed`).  `flip` appends the horizontal
    mirror image of every (subsampled) image, doubling the dataset.
    """
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if n is not None and n < 1:
        raise InputError(f"the number of points must be positive, got {n}")
    if data_dir is not None and name != "fashion-mnist":
        raise InputError("--data-dir applies to fashion-mnist only")
    if name in TOYS:
        ds = _toy(name, split, n if n is not None else TOY_SIZE, seed)
    else:
        if name == "digits":
            x, labels, scaling, source, classes = _digits(split)
        elif name == "fashion-mnist":
            x, labels, scaling, source, classes = _fashion(Path(data_dir) if data_dir else FASHION_DIR, split)
        else:
            x, labels, scaling, source, classes = _from_path(name, split)
        x, labels = _subsample(x, labels, n, seed)
        ds = _make(name, split, x, labels, scaling, source, classes)
    return _flipped(ds) if flip else ds


def check_shape(name, shape) -> None:
    """Data must be (N, ...) with N >= 1 points of at least one value each."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        raise InputError(f"{name}: data must have shape (N, ...), got {shape}")
    if shape[0] == 0 or math.prod(shape[1:]) == 0:
        raise InputError(f"{name}: no data: shape {shape} has no {'points' if shape[0] == 0 else 'values'}")


def _make(name, split, x, labels, scaling, source, classes=()) -> Dataset:
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


def _subsample(x, labels, n, seed):
    if n is None:
        return x, labels
    if n > len(x):
        raise InputError(f"asked for {n} points but the dataset has only {len(x)}")
    idx = np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))
    return x[idx], None if labels is None else labels[idx]


def _flipped(ds: Dataset) -> Dataset:
    if not ds.is_image:
        raise InputError(f"{ds.name}: --flip needs images (N, C, H, W), not points of shape {ds.shape}")
    x = torch.cat([ds.x, ds.x.flip(-1)])
    labels = None if ds.labels is None else torch.cat([ds.labels, ds.labels])
    return Dataset(name=ds.name, split=ds.split, x=x, labels=labels, shape=ds.shape, scaling=ds.scaling,
                   fingerprint=fingerprint(x), source=ds.source, flip=True, classes=ds.classes)


# -- real images ----------------------------------------------------------------------------------


def _from_uint8(pixels: np.ndarray) -> np.ndarray:
    """x / 127.5 - 1 rounded once to float32 (a lookup table: exact and light on memory)."""
    return (np.arange(256) / 127.5 - 1.0).astype(np.float32)[pixels]


def _digits(split):
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    n_test = round(DIGITS_TEST_FRACTION * len(order))
    idx = np.sort(order[n_test:] if split == "train" else order[:n_test])
    x = digits.images[idx, None].astype(np.float32) / 8.0 - 1.0
    scaling = {"kind": "affine", "formula": "x / 8 - 1", "scale": 0.125, "offset": -1.0,
               "input_range": [0, 16], "output_range": [-1.0, 1.0]}
    source = "sklearn.datasets.load_digits (80/20 split, numpy seed 0)"
    return x, digits.target[idx], scaling, source, [str(d) for d in range(10)]


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX array (optionally gzipped): 2 zero bytes, type 0x08, rank, big-endian dims."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise InputError(f"{path}: cannot read this IDX file ({reason(err)})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise InputError(f"{path}: not an unsigned-byte IDX file")
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    offset = 4 + 4 * rank
    if len(raw) - offset != math.prod(dims):
        raise InputError(f"{path}: IDX header says {dims} but holds {len(raw) - offset} bytes")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Fashion-MNIST file {stem}[.gz] not found in {folder}; {FASHION_HINT}")


def _fashion(folder: Path, split):
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.shape != (len(images),):
        raise InputError(f"{folder}: Fashion-MNIST images {images.shape} and labels {labels.shape} differ")
    return _from_uint8(images[:, None]), labels, UINT8_SCALING, str(folder), list(FASHION_CLASSES)


def _from_path(name, split):
    if not str(name).strip():
        raise InputError("--data: empty name; give a dataset name, a .npy/.npz file or a folder of images")
    path = Path(name)
    if not path.exists():
        raise FileNotFoundError(
            f"unknown dataset {name!r}: not one of {', '.join(BUILTIN)} and no such file or folder")
    if path.is_dir():
        if split != "train":
            raise NoTestSplit(f"{path}: an image folder has no test split")
        return _image_folder(path)
    if path.suffix == ".npy":
        if split != "train":
            raise NoTestSplit(f"{path}: a .npy file has no test split (use an .npz with x_test)")
        x, scaling = _scaled_array(read_npy(path), path)
        return x, None, scaling, str(path), []
    if path.suffix == ".npz":
        return _npz(path, split)
    raise InputError(f"{path}: expected a .npy or .npz file or a folder of images")


NPY_MAGIC = b"\x93NUMPY"


def npy_header(path) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, Fortran order, dtype, data offset) of a .npy file, checked against the file's size.

    Raises InputError naming the file for anything that is not a complete .npy of plain numbers.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
                raise InputError(f"{path}: not a .npy file (no NumPy header; empty, text or another format)")
            f.seek(0)
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except InputError:
        raise
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or reason(err)})") from None
    except Exception as err:  # noqa: BLE001 - numpy's header parser raises ValueError, SyntaxError, TokenError...
        raise InputError(f"{path}: damaged .npy header ({reason(err)})") from None
    if dtype.hasobject:
        raise InputError(f"{path}: holds Python objects (dtype object); only arrays of numbers are loaded, "
                         "never pickled objects (they could run code)")
    need = offset + math.prod(shape) * dtype.itemsize
    if size < need:
        raise InputError(f"{path}: truncated: the header promises {dtype} data of shape {tuple(shape)} "
                         f"({need} bytes) but the file has {size} bytes")
    return tuple(shape), fortran, dtype, offset


def read_npy(path) -> np.ndarray:
    """A .npy array of numbers (never unpickled); InputError naming the file if it is damaged."""
    npy_header(path)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"{path}: cannot read this .npy file ({reason(err)})") from None


def _npz(path: Path, split):
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not an .npz archive (not a zip file; empty, truncated or another format)")
    try:
        return _npz_arrays(path, split)
    except InputError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        raise InputError(f"{path}: damaged .npz archive ({reason(err)})") from None


def _npz_member(arrays, key: str, path: Path) -> np.ndarray:
    try:
        arr = arrays[key]
    except ValueError as err:
        raise InputError(f"{path}: array {key!r} cannot be read ({reason(err)})") from None
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{path}: member {key!r} is not a .npy array")
    return arr


def _npz_arrays(path: Path, split):
    with np.load(path, allow_pickle=False) as arrays:
        keys = list(arrays.keys())
        if split == "train":
            xkey = "x" if "x" in arrays else keys[0] if len(keys) == 1 else None
            lkey = next((k for k in ("labels", "y") if k in arrays), None)
        else:
            xkey = "x_test" if "x_test" in arrays else None
            lkey = next((k for k in ("labels_test", "y_test") if k in arrays), None)
        if xkey is None:
            need = "x" if split == "train" else "x_test"
            error = InputError if split == "train" else NoTestSplit
            raise error(f"{path}: no array named {need!r} (holds {', '.join(keys) or 'nothing'})")
        x, scaling = _scaled_array(_npz_member(arrays, xkey, path), path)
        labels = _npz_member(arrays, lkey, path) if lkey else None
    if labels is not None and not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{path}: labels must be integers, got {labels.dtype}")
    return x, labels, scaling, str(path), []


def _scaled_array(arr: np.ndarray, path) -> tuple[np.ndarray, dict]:
    """uint8 arrays are images: scaled to [-1, 1], (N, H, W) gets a channel axis; floats are kept as given."""
    if arr.dtype == np.uint8:
        if arr.ndim == 3:
            arr = arr[:, None]
        return _from_uint8(arr), UINT8_SCALING
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{path}: expected a numeric array, got dtype {arr.dtype}")
    return arr.astype(np.float32), {"kind": "none", "formula": "x", "input_dtype": str(arr.dtype)}


def _image_folder(folder: Path):

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    # ImageFolder convention: when every image sits in a first-level subfolder, that folder is its class.
    parents = [p.relative_to(folder).parts for p in files]
    classes = sorted({parts[0] for parts in parents}) if all(len(parts) >= 2 for parts in parents) else []
    images = [_read_image(p) for p in files]
    grey = all(im.mode in ("1", "L", "LA") for im in images)
    arrays = [np.asarray(im.convert("L" if grey else "RGB")) for im in images]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        listed = ", ".join(map(str, sorted(sizes)))
        raise InputError(f"{folder}: images differ in size ({listed}); resize them first")
    x = np.stack(arrays)
    x = x[:, None] if grey else x.transpose(0, 3, 1, 2)
    labels = np.array([classes.index(parts[0]) for parts in parents]) if classes else None
    scaling = {**UINT8_SCALING, "mode": "L" if grey else "RGB"}
    return _from_uint8(x), labels, scaling, str(folder), classes


def _read_image(path: Path):
    """One decoded image (file closed); InputError naming the file if it is not a readable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except UnidentifiedImageError:
        raise InputError(f"{path}: not a readable image (empty, damaged or an unknown format)") from None
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ... on damaged files
        raise InputError(f"{path}: not a readable image ({reason(err)})") from None


# -- 2-D toys (the comparative-study paper's generators) ------------------------------------------


def _toy(name, split, n, seed) -> Dataset:
    train_points, labels = TOY_GENERATORS[name](n, np.random.default_rng([seed, 0]))
    mean, std = train_points.mean(0), train_points.std(0)
    if split == "test":
        points, labels = TOY_GENERATORS[name](n, np.random.default_rng([seed, 1]))
    else:
        points = train_points
    scaling = {"kind": "standardise", "formula": "(x - mean) / std per coordinate (train-draw statistics)",
               "mean": mean.tolist(), "std": std.tolist()}
    source = f"generated: {name}, n={n}, seed={seed}"
    return _make(name, split, (points - mean) / std, labels, scaling, source)


def _split_counts(n, parts):
    return [n // parts + (i < n % parts) for i in range(parts)]


def _shuffled(points, labels, rng):
    order = rng.permutation(len(points))
    return points[order], None if labels is None else labels[order]


def _gaussian(n, rng):
    return rng.standard_normal((n, 2)), None


def _clusters(n, rng):
    """4 isotropic unit-std Gaussians centred at (+-5, +-5), equal counts."""
    centres = np.array([[-5.0, -5.0], [-5.0, 5.0], [5.0, -5.0], [5.0, 5.0]])
    labels = np.repeat(np.arange(4), _split_counts(n, 4))
    return _shuffled(centres[labels] + rng.standard_normal((n, 2)), labels, rng)


def _ring(n, rng):
    """Two intersecting rings centred at (0, 0) and (5, 0): angle U(0, 2pi), radius N(4, 0.2^2)."""
    labels = np.repeat(np.arange(2), _split_counts(n, 2))
    angle = rng.uniform(0, 2 * np.pi, n)
    radius = rng.normal(4.0, 0.2, n)
    points = np.stack([radius * np.cos(angle) + 5.0 * labels, radius * np.sin(angle)], 1)
    return _shuffled(points, labels, rng)


def _swiss_roll(n, rng):
    """sklearn's roll in the (x, z) plane: t = 1.5 pi (1 + 2u), (t cos t, t sin t) + N(0, 0.5^2)."""
    t = 1.5 * np.pi * (1 + 2 * rng.uniform(size=n))
    points = np.stack([t * np.cos(t), t * np.sin(t)], 1) + rng.normal(0.0, 0.5, (n, 2))
    return points, None


def _waves(n, rng):
    """Two parallel waves y = c + 0.3 sin(6 pi x), c in {0.6, 0.3}, x = linspace(0, 1), noise 0.03 on y."""
    points, labels = [], []
    for label, (count, offset) in enumerate(zip(_split_counts(n, 2), (0.6, 0.3), strict=True)):
        x = np.linspace(0.0, 1.0, count)
        y = offset + 0.3 * np.sin(6 * np.pi * x) + rng.normal(0.0, 0.03, count)
        points.append(np.stack([x, y], 1))
        labels.append(np.full(count, label))
    return _shuffled(np.concatenate(points), np.concatenate(labels), rng)


TOY_GENERATORS = {"gaussian": _gaussian, "clusters": _clusters, "ring": _ring, "swiss-roll": _swiss_roll,
                  "waves": _waves}
