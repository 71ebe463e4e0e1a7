"""User arrays: .npy headers checked before reading, .npz members and splits, never pickled objects."""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from lossfloor.core.errors import InputError, reason
from lossfloor.data.dataset import UINT8_SCALING, NoTestSplit
from lossfloor.data.images import from_uint8

NPY_MAGIC = b"\x93NUMPY"
MAX_MAGNITUDE = 1e12  # largest |x| of a float or integer array (float32 squared distances stay finite)


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


def read_npz(path: Path, split):
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not an .npz archive (not a zip file; empty, truncated or another format)")
    try:
        return _npz_arrays(path, split)
    except InputError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        raise InputError(f"{path}: damaged .npz archive ({reason(err)})") from None


def npz_member(arrays, key: str, path: Path) -> np.ndarray:
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
        x, scaling = scaled_array(npz_member(arrays, xkey, path), path)
        labels = npz_member(arrays, lkey, path) if lkey else None
    if labels is not None and not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{path}: labels must be integers, got {labels.dtype}")
    return x, labels, scaling, str(path), []


def scaled_array(arr: np.ndarray, path) -> tuple[np.ndarray, dict]:
    """uint8 arrays are images: scaled to [-1, 1], (N, H, W) gets a channel axis; floats are kept as given."""
    if arr.dtype == np.uint8:
        if arr.ndim == 3:
            arr = arr[:, None]
        return from_uint8(arr), UINT8_SCALING
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{path}: expected a numeric array, got dtype {arr.dtype}")
    finite = arr[np.isfinite(arr)] if np.issubdtype(arr.dtype, np.floating) else arr
    largest = float(np.abs(finite).max(initial=0))  # NaN and Inf are refused, by row, when the data is made
    if largest > MAX_MAGNITUDE:
        raise InputError(f"{path}: values up to {largest:.3g} in magnitude; at most {MAX_MAGNITUDE:.0e} (the "
                         "kernel's float32 squared distances must stay finite): rescale the data")
    return arr.astype(np.float32), {"kind": "none", "formula": "x", "input_dtype": str(arr.dtype)}
