"""Atomic file writes: every output goes to a temporary file in the target folder, then is renamed.

A reader (or an interrupted run) therefore sees either the old file or the complete new one, never a
half-written one.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path, data: bytes) -> None:
    """Write bytes to `path` through a temporary file in the same folder, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give outputs the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> None:
    """Write text (UTF-8) to `path` through a temporary file in the same folder, then rename."""
    atomic_write_bytes(path, text.encode())


def json_text(obj, indent: int | None = None) -> str:
    """Strict JSON text: NaN and infinities become null (`json.dumps` would write NaN, which is not JSON),
    then `allow_nan=False` guarantees it.  Every JSON lossfloor writes goes through here."""
    return json.dumps(finite_or_null(obj), indent=indent, allow_nan=False)


def finite_or_null(obj):
    """`obj` with every non-finite float (in dicts, lists and tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_null(v) for v in obj]
    return obj


def atomic_write_json(path, obj, indent: int | None = 1) -> None:
    """`json_text(obj)` written atomically."""
    atomic_write_text(path, json_text(obj, indent))


def atomic_torch_save(obj, path) -> None:
    """torch.save to memory, then an atomic write (temporary file and rename)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
