"""Out-of-core data rows: a .npy file or a folder of .npy shards, read from disk a chunk at a time.

The estimators accept any array-like with `len`, `shape`, `reshape(n, -1)`, contiguous slices and sorted
integer-array indexing.  `NpyRows` reads with positioned file reads instead of a memory map, so neither the
resident memory nor the address space grows with the file: peak memory is set by the chunk size and the
query batch.  uint8 files are images and are scaled to [-1, 1] as they are read, like `lossfloor.data`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from lossfloor.core.errors import InputError
from lossfloor.data.arrays import npy_header
from lossfloor.data.dataset import UINT8_SCALING, Dataset, check_shape
from lossfloor.data.images import from_uint8


class NpyRows:
    """The rows of one .npy file, read on demand as float32 (float64 files stay float64)."""

    def __init__(self, path, row_shape: tuple | None = None):
        self.path = Path(path)
        shape, fortran, dtype, self.offset = npy_header(self.path)  # complete and free of Python objects
        if fortran:
            raise InputError(f"{self.path}: need a C-ordered array, got a Fortran-ordered one")
        check_shape(self.path, shape)
        if not (dtype == np.uint8 or np.issubdtype(dtype, np.floating)):
            raise InputError(f"{self.path}: expected uint8 images or floats, got dtype {dtype}")
        self.file_shape, self.file_dtype = tuple(shape), dtype
        if row_shape is None:  # like lossfloor.data, (N, H, W) uint8 images get a channel axis
            row_shape = (1, *shape[1:]) if dtype == np.uint8 and len(shape) == 3 else shape[1:]
        self.row_shape = tuple(row_shape)
        self.row_size = int(np.prod(self.file_shape[1:]))

    @property
    def dtype(self):
        return np.dtype(np.float64) if self.file_dtype == np.float64 else np.dtype(np.float32)

    @property
    def shape(self) -> tuple:
        return (self.file_shape[0], *self.row_shape)

    @property
    def scaling(self) -> dict:
        """The preprocessing applied as rows are read."""
        return UINT8_SCALING if self.file_dtype == np.uint8 else {"kind": "none", "formula": "x"}

    def __len__(self) -> int:
        return self.file_shape[0]

    def reshape(self, n: int, *rest):
        """A flat (N, D) view of the same file: only reshape(len, -1) is supported."""
        if n != len(self) or rest not in ((-1,), (self.row_size,)):
            raise ValueError(f"NpyRows can only be reshaped to ({len(self)}, -1)")
        return NpyRows(self.path, (self.row_size,))

    def _decode(self, raw: np.ndarray, count: int) -> np.ndarray:
        if self.file_dtype == np.uint8:
            raw = from_uint8(raw)  # UINT8_SCALING, bit for bit as lossfloor.data applies it
        return raw.astype(self.dtype, copy=False).reshape(count, *self.row_shape)

    def _read(self, f, start: int, count: int) -> np.ndarray:
        f.seek(self.offset + start * self.row_size * self.file_dtype.itemsize)
        raw = np.fromfile(f, dtype=self.file_dtype, count=count * self.row_size)
        return self._decode(raw, count)

    def __getitem__(self, item):
        with open(self.path, "rb") as f:
            if isinstance(item, slice):
                start, stop, step = item.indices(len(self))
                if step != 1:
                    raise ValueError("NpyRows supports contiguous slices only")
                return self._read(f, start, max(0, stop - start))
            idx = np.asarray(item)
            if idx.ndim == 0:
                idx = idx[None]
            out = np.empty((len(idx), *self.row_shape), dtype=self.dtype)
            for k, i in enumerate(idx.tolist()):
                if not -len(self) <= i < len(self):
                    raise IndexError(f"row {i} out of range for {len(self)} rows")
                out[k] = self._read(f, i % len(self), 1)[0]
            return out if np.ndim(item) else out[0]


class ShardedRows:
    """Several row sources with the same row shape, concatenated along the rows without loading them."""

    def __init__(self, parts):
        self.parts = list(parts)
        if not self.parts:
            raise ValueError("no shards given")
        shapes = {tuple(p.shape[1:]) for p in self.parts}
        if len(shapes) != 1:
            raise ValueError(f"shards have different row shapes: {sorted(shapes)}")
        self.bounds = np.cumsum([0] + [len(p) for p in self.parts])

    @property
    def dtype(self):
        return np.result_type(*[p.dtype for p in self.parts])

    @property
    def shape(self) -> tuple:
        return (int(self.bounds[-1]), *self.parts[0].shape[1:])

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def reshape(self, n: int, *rest):
        """A flat (N, D) view: every shard reshaped to (len, -1)."""
        if n != len(self):
            raise ValueError(f"ShardedRows can only be reshaped to ({len(self)}, -1)")
        return ShardedRows([p.reshape(len(p), *rest) for p in self.parts])

    def __getitem__(self, item):
        if isinstance(item, slice):
            start, stop, step = item.indices(len(self))
            if step != 1:
                raise ValueError("ShardedRows supports contiguous slices only")
            pieces = [p[max(start - lo, 0):min(stop, hi) - lo]
                      for p, lo, hi in zip(self.parts, self.bounds[:-1], self.bounds[1:], strict=True)
                      if start < hi and stop > lo]
            return np.concatenate(pieces) if pieces else np.empty((0, *self.shape[1:]), dtype=self.dtype)
        idx = np.asarray(item)
        if idx.ndim == 0:
            return self[idx[None]][0]
        idx = np.where(idx < 0, idx + len(self), idx)
        part = np.searchsorted(self.bounds, idx, side="right") - 1
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        for k in np.unique(part):
            mine = part == k
            out[mine] = self.parts[k][idx[mine] - self.bounds[k]]
        return out


class IndexedRows:
    """The rows `index` of a row source, gathered lazily chunk by chunk (used for per-class data)."""

    def __init__(self, rows, index):
        self.rows, self.index = rows, np.asarray(index)

    @property
    def dtype(self):
        return self.rows.dtype

    @property
    def shape(self) -> tuple:
        return (len(self.index), *self.rows.shape[1:])

    def __len__(self) -> int:
        return len(self.index)

    def reshape(self, n: int, *rest):
        return IndexedRows(self.rows.reshape(len(self.rows), *rest), self.index)

    def __getitem__(self, item):
        idx = self.index[item]
        order = np.argsort(idx, kind="stable")
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        out[order] = self.rows[idx[order]]  # sorted reads are sequential on disk
        return out


def take_rows(rows, index):
    """rows[index]: gathered in memory for tensors and arrays, lazily for memmaps and out-of-core sources."""
    if isinstance(rows, torch.Tensor) or (isinstance(rows, np.ndarray) and not isinstance(rows, np.memmap)):
        return rows[index]
    return IndexedRows(rows, index)


def open_rows(path):
    """A .npy file, or a folder of .npy shards concatenated in name order, as out-of-core rows."""
    path = Path(path)
    if path.is_dir():
        shards = sorted(path.glob("*.npy"))
        if not shards:
            raise FileNotFoundError(f"{path}: no .npy shards in this folder")
        parts = [NpyRows(p) for p in shards]
        for part in parts[1:]:
            if part.shape[1:] != parts[0].shape[1:]:
                raise InputError(f"{part.path}: rows of shape {part.shape[1:]} differ from the "
                                 f"{parts[0].shape[1:]} of {parts[0].path}")
        return ShardedRows(parts)
    if path.suffix != ".npy":
        raise InputError(f"{path}: out-of-core data must be a .npy file or a folder of .npy shards")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return NpyRows(path)


def fingerprint_rows(rows, chunk_size: int = 8192) -> str:
    """sha256 of the shape and float32 bytes, streamed: `lossfloor.data.fingerprint` of the same data."""
    shape = tuple(rows.shape)
    digest = hashlib.sha256(repr(shape).encode())
    for start in range(0, len(rows), chunk_size):
        digest.update(np.ascontiguousarray(rows[start:start + chunk_size], dtype=np.float32).tobytes())
    return digest.hexdigest()


def _row_file(rows, i: int) -> str:
    """Where row i of a row source lives: 'file' or 'file, row j' of the shard that holds it."""
    if isinstance(rows, ShardedRows):
        k = int(np.searchsorted(rows.bounds, i, side="right") - 1)
        return _row_file(rows.parts[k], i - int(rows.bounds[k]))
    return f"{getattr(rows, 'path', 'data')}: data point {i}"


def scan_rows(rows, chunk_size: int = 8192) -> str:
    """`fingerprint_rows`, checking each chunk as it streams by: InputError at the first row holding NaN or
    Inf, or when every row is identical (zero variance).  Nothing is written before this pass."""
    shape = tuple(rows.shape)
    digest = hashlib.sha256(repr(shape).encode())
    lo = hi = None
    for start in range(0, len(rows), chunk_size):
        chunk = np.ascontiguousarray(rows[start:start + chunk_size], dtype=np.float32)
        flat = chunk.reshape(len(chunk), -1)
        finite = np.isfinite(flat).all(1)
        if not finite.all():
            raise InputError(f"{_row_file(rows, start + int(np.argmin(finite)))} contains NaN or Inf")
        lo = flat.min(0) if lo is None else np.minimum(lo, flat.min(0))
        hi = flat.max(0) if hi is None else np.maximum(hi, flat.max(0))
        digest.update(chunk.tobytes())
    if len(rows) > 1 and np.array_equal(lo, hi):
        raise InputError(f"{getattr(rows, 'path', 'data')}: all {len(rows)} data points are identical (zero "
                         "variance): the optimal loss is 0 at every sigma")
    return digest.hexdigest()


def load_rows_dataset(path) -> Dataset:
    """A .npy file or a folder of .npy shards as a `Dataset` whose rows stay on disk (no labels); every row
    is checked (finite, not all identical) in the one streaming pass that computes the fingerprint."""
    rows = open_rows(path)
    scaling = rows.parts[0].scaling if isinstance(rows, ShardedRows) else rows.scaling
    return Dataset(name=str(path), split="train", x=rows, labels=None, shape=tuple(rows.shape[1:]),
                   scaling=scaling, fingerprint=scan_rows(rows), source=f"{path} (read from disk)")
