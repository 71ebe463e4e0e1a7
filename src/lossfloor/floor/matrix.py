"""`DataMatrix`: the dataset's rows for the kernel (centred once, norms cached, in memory or on disk)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from lossfloor.core.errors import InputError
from lossfloor.floor.kernel import (
    DEFAULT_CHUNK,
    row_square_norms,
)


def gather_rows(data, idx: Tensor, device, dtype) -> Tensor:
    """Rows of a tensor or an array-like (memmap) by index."""
    if isinstance(data, Tensor):
        return data[idx.to(data.device)].to(device=device, dtype=dtype)
    order = np.argsort(idx.numpy())
    rows = np.empty((len(idx),) + tuple(data.shape[1:]), dtype=data.dtype)
    rows[order] = data[np.sort(idx.numpy())]  # sorted reads are sequential on a memmap
    return torch.from_numpy(rows).to(device=device, dtype=dtype)


class DataMatrix:
    """Data rows as an (N, D) tensor or array-like (memmap), with the centre and mean squared norm."""

    def __init__(self, rows, *, device="cpu", dtype=torch.float32, chunk_size: int = DEFAULT_CHUNK):
        if len(rows) < 2:
            raise InputError(f"need at least 2 data points, got {len(rows)}")
        self.rows = rows.reshape(len(rows), -1)
        if isinstance(self.rows, Tensor):  # in-memory data lives on the working device
            self.rows = self.rows.to(device=device, dtype=dtype)
        self.device, self.dtype, self.chunk_size = torch.device(device), dtype, chunk_size
        self.projection = None  # built on first use by exact pruning (EstimatorConfig.prune)
        self.prune_fails_from = math.inf  # the least sigma at which pruning kept half the rows or more
        self._row_sq = self._centred = None
        self.n, self.dim = self.rows.shape
        self.center = sum(x.sum(0) for x in self._chunks()) / self.n
        # Two passes: the centred second moment is tr Cov(x0), the large-sigma limit of J* (summed).
        self.mean_sq = sum((x - self.center).pow(2).sum().item() for x in self._chunks()) / self.n

    @property
    def row_sq(self) -> Tensor | None:
        """float64 squared norms of the centred rows, computed once (in-memory rows only)."""
        if self._row_sq is None and isinstance(self.rows, Tensor):
            self._row_sq = row_square_norms(self.rows, self.center, self.dtype, self.chunk_size)
        return self._row_sq

    @property
    def kernel_rows(self) -> tuple:
        """The rows the kernel reads and the shift it subtracts from them: in-memory rows are centred once (a
        copy the size of the data; subtracting the centre in every call cost ~2% of the kernel's time), rows
        on disk per chunk as they are read."""
        if not isinstance(self.rows, Tensor):
            return self.rows, self.center
        if self._centred is None:
            self._centred = self.rows - self.center.to(self.rows.device, self.dtype)
        return self._centred, None

    def _chunks(self):
        for start in range(0, self.n, self.chunk_size):
            rows = self.rows[start:start + self.chunk_size]
            if isinstance(rows, Tensor):  # it may live on the GPU: no numpy round trip
                yield rows.double()
            else:
                yield torch.from_numpy(np.array(rows, dtype=np.float64))

    @property
    def variance(self) -> float:
        """Per-dimension data variance, the large-sigma limit of J*."""
        return self.mean_sq / self.dim

    def centered_rows(self, idx: Tensor) -> Tensor:
        """Rows by index, centred, on the working device and dtype."""
        return gather_rows(self.rows, idx, self.device, self.dtype) - self.center.to(self.device, self.dtype)
