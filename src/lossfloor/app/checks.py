"""Checks before any work starts: the model's size (counted on the meta device) and writable output paths."""

from __future__ import annotations

import os

from lossfloor.core.errors import InputError, reason
from lossfloor.nets.networks import build_model, parameter_count

# -- model size -------------------------------------------------------------------------------------

MAX_PARAMETERS = 1 << 28  # 1 GiB of float32 weights (4 GiB with the EMA copy and Adam's two moments)


def check_model_size(config) -> int:
    """The parameter count of a `ModelConfig`, counted without allocating (meta device); InputError above
    MAX_PARAMETERS, before a huge --width/--depth exhausts the memory."""
    import torch


    with torch.device("meta"):
        count = parameter_count(build_model(config))
    if count > MAX_PARAMETERS:
        given = " ".join(f"--{k} {v}" for k, v in (("width", config.width), ("depth", config.depth)) if v)
        raise InputError(f"{given or '--model'}: this {config.kind} would have {count:,} parameters; at most "
                         f"{MAX_PARAMETERS:,} (1 GiB of float32 weights)")
    return count


# -- output paths ----------------------------------------------------------------------------------


def check_out_path(out, option: str = "--out", *, file: bool = False) -> None:
    """`out` (a folder, or with `file` a file, to be written) can be created or replaced: no dangling
    symbolic link on the way, and the nearest existing folder at or above it (above it for a file) is a
    writable folder.  Checked before any work starts."""
    import tempfile
    from pathlib import Path

    out = Path(out)
    if file and out.is_dir():
        raise InputError(f"{option} {out}: is a folder, not a file")
    probe = out
    if file and out.exists():
        probe = out.parent
    while not probe.exists():
        if probe.is_symlink():
            raise InputError(f"{option} {out}: {probe} is a symbolic link to {os.readlink(probe)}, which "
                             "does not exist")
        if probe == probe.parent:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{option} {out}: {probe} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise InputError(f"{option} {out}: cannot write in {probe} ({err.strerror or reason(err)})") from None
