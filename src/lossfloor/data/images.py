"""Image data: the embedded digits, Fashion-MNIST IDX files and image folders, scaled to [-1, 1]."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from lossfloor.core.errors import InputError, reason
from lossfloor.core.registry import Registry
from lossfloor.data.dataset import FASHION_DIR, FASHION_HINT, UINT8_SCALING

DIGITS_TEST_FRACTION = 0.2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# The Pillow formats an image folder may hold, whatever a file's suffix: all decoded by Pillow itself, none
# by an external program (Pillow renders EPS/PostScript with Ghostscript: never accepted).
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
UINT16_SCALING = {"kind": "affine", "formula": "x / 32767.5 - 1", "scale": 1 / 32767.5, "offset": -1.0,
                  "input_range": [0, 65535], "output_range": [-1.0, 1.0]}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")


# -- real images ----------------------------------------------------------------------------------


def from_uint8(pixels: np.ndarray) -> np.ndarray:
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
    return from_uint8(images[:, None]), labels, UINT8_SCALING, str(folder), list(FASHION_CLASSES)


def read_image_folder(folder: Path):

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    # ImageFolder convention: when every image sits in a first-level subfolder, that folder is its class.
    parents = [p.relative_to(folder).parts for p in files]
    classes = sorted({parts[0] for parts in parents}) if all(len(parts) >= 2 for parts in parents) else []
    read = [_read_image(p) for p in files]
    depths = {bits for _, bits in read}
    if len(depths) > 1:
        first16 = next(p for p, (_, bits) in zip(files, read, strict=True) if bits == 16)
        raise InputError(f"{folder}: images differ in bit depth (8-bit ones and 16-bit ones such as "
                         f"{first16}); convert them to one depth first")
    images = [im for im, _ in read]
    sixteen = depths == {16}
    grey = sixteen or all(im.mode in ("1", "L", "LA") for im in images)
    if sixteen:
        arrays = [np.asarray(im).astype(np.uint16) for im in images]
    else:
        arrays = [np.asarray(im.convert("L" if grey else "RGB")) for im in images]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        listed = ", ".join(map(str, sorted(sizes)))
        raise InputError(f"{folder}: images differ in size ({listed}); resize them first")
    x = np.stack(arrays)
    x = x[:, None] if grey else x.transpose(0, 3, 1, 2)
    labels = np.array([classes.index(parts[0]) for parts in parents]) if classes else None
    if sixteen:
        scaling = {**UINT16_SCALING, "mode": "I;16"}
        return (x / 32767.5 - 1.0).astype(np.float32), labels, scaling, str(folder), classes
    scaling = {**UINT8_SCALING, "mode": "L" if grey else "RGB"}
    return from_uint8(x), labels, scaling, str(folder), classes


def _read_image(path: Path):
    """(image, bits per sample): one decoded image (file closed), 8 or 16 bits; InputError naming the file if
    it is not a readable image of `IMAGE_FORMATS`.

    Pillow is told the formats (``formats=``): it never identifies a file as anything else, so no other
    decoder runs, and none of these formats hands the file to an external program (EPS/PostScript, which
    Pillow renders with Ghostscript, is refused like any other format, whatever the file's name)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=IMAGE_FORMATS) as im:
            bits = _bits_per_sample(im, path)
            im.load()
            return im.copy(), bits
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{path}: not a readable image of the accepted formats "
                         f"({', '.join(IMAGE_FORMATS)}): empty, damaged or another format") from None
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ... on damaged files
        raise InputError(f"{path}: not a readable image ({reason(err)})") from None


def _bits_per_sample(im, path: Path) -> int:
    """8 or 16 (16-bit greyscale); InputError for what would be read wrongly (16-bit colour, which Pillow
    cuts to 8 bits, and 32-bit integer or floating-point images)."""
    if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):  # older Pillow: "I" for 16 bits
        return 16
    if im.mode in ("I", "F"):
        raise InputError(f"{path}: a {'floating-point' if im.mode == 'F' else '32-bit integer'} image "
                         f"(mode {im.mode}); only 8-bit images and 16-bit greyscale are read: save the "
                         "array as .npy instead")
    # A tile is (codec, box, offset, args); args is the raw mode or a tuple that starts with it.
    rawmodes = [t[3] if isinstance(t[3], str) else (t[3] or ("",))[0] for t in (im.tile or [])]
    if any(isinstance(r, str) and ";16" in r for r in rawmodes):
        raise InputError(f"{path}: a 16-bit colour image (mode {im.mode}); Pillow reads only its 8 high "
                         "bits: convert it to 8 bits or save the array as .npy")
    return 8


IMAGE_SETS = Registry("image set")
"""Built-in image sets: name -> load(split, data_dir) -> (x, labels, scaling, source, classes)."""
IMAGE_SETS.add("digits", lambda split, data_dir=None: _digits(split),
               "scikit-learn's 1,797 8x8 digits (1,438 train / 359 test)")
IMAGE_SETS.add("fashion-mnist",
               lambda split, data_dir=None: _fashion(Path(data_dir) if data_dir else FASHION_DIR, split),
               "Fashion-MNIST 28x28 (Debian's dataset-fashion-mnist; 60,000 train / 10,000 test)")
