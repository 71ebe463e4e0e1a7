"""Schemas of the files lossfloor loads back (curves, checkpoints) and their safe readers (JSON,
weights_only)."""

from __future__ import annotations

import json
import math

from lossfloor.core.errors import InputError, reason

# -- a small schema validator ---------------------------------------------------------------------
# A spec is a function spec(value, field) that returns None or raises Mismatch(field, expected, value);
# `validate` turns the first mismatch into one line naming the file (`where`) and the field.


class Mismatch(Exception):
    """A field that does not fit its spec: its dotted name, what was expected and what was found."""

    def __init__(self, field: str, expected: str, value, got: str | None = None):
        super().__init__(field, expected)
        self.field, self.expected, self.value = field, expected, value
        self.got = describe(value) if got is None else got


def describe(value) -> str:
    """A short description of a found value (JSON names for containers)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)}"
    shape = getattr(value, "shape", None)
    return f"a {type(value).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else "")


def validate(doc, spec, where: str) -> None:
    """Check `doc` against `spec`; InputError "WHERE: field F: expected E, got G" at the first mismatch."""
    try:
        spec(doc, "")
    except Mismatch as m:
        at = f"field {m.field!r}: " if m.field else ""
        raise InputError(f"{where}: {at}expected {m.expected}, got {m.got}") from None


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def number(lo: float | None = None, hi: float | None = None, *, integer: bool = False,
           positive: bool = False, finite: bool = True):
    """A number (an int if `integer`; finite unless `finite` is False) in [lo, hi], > 0 if `positive`."""
    kind = "an integer" if integer else "a finite number" if finite else "a number"
    bounds = [b for b in ("> 0" if positive else None, None if lo is None else f">= {lo:g}",
                          None if hi is None else f"<= {hi:g}") if b]
    expected = kind + (f" {' and '.join(bounds)}" if bounds else "")

    def spec(value, field):
        ok = (_is_number(value) and (math.isfinite(value) or not finite)
              and (isinstance(value, int) or not integer) and (lo is None or value >= lo)
              and (hi is None or value <= hi) and (not positive or value > 0))
        if not ok:
            raise Mismatch(field, expected, value)
    return spec


def string(choices=None):
    """A string, one of `choices` if given."""
    expected = "a string" if choices is None else f"one of {', '.join(map(repr, choices))}"

    def spec(value, field):
        if not isinstance(value, str) or (choices is not None and value not in choices):
            raise Mismatch(field, expected, value)
    return spec


def anything(value, field) -> None:
    """Any value."""


def list_of(item, min_len: int = 0, length: int | None = None):
    """A list (or tuple) whose items fit `item`."""
    expected = f"a list of {length}" if length is not None else "a list" + (" (not empty)" if min_len else "")

    def spec(value, field):
        if not isinstance(value, list | tuple) or len(value) < min_len or length not in (None, len(value)):
            raise Mismatch(field, expected, value)
        for i, v in enumerate(value):
            item(v, f"{field}[{i}]")
    return spec


def either(*specs, expected: str):
    """Fits any of `specs`."""
    def spec(value, field):
        for s in specs:
            try:
                return s(value, field)
            except Mismatch:
                pass
        raise Mismatch(field, expected, value)
    return spec


class optional:
    """A field that may be missing (or null when `none`)."""

    def __init__(self, spec, none: bool = True):
        self.spec, self.none = spec, none

    def __call__(self, value, field):
        if not (self.none and value is None):
            self.spec(value, field)


def mapping(fields: dict | None = None, values=None, name: str = "an object"):
    """A dict with string keys: the `fields` (specs; `optional` ones may be missing) and any other keys,
    whose values must then fit `values` if given."""
    fields = fields or {}

    def spec(value, field):
        if not isinstance(value, dict):
            raise Mismatch(field, name, value)
        for key, sub in fields.items():
            at = f"{field}.{key}" if field else key
            if key not in value:
                if not isinstance(sub, optional):
                    raise Mismatch(at, "a value", None, got="nothing (the field is missing)")
                continue
            sub(value[key], at)
        if values is not None:
            for key, v in value.items():
                if key not in fields:
                    at = f"{field}.{key}" if field else str(key)
                    if not isinstance(key, str):
                        raise Mismatch(at, "string keys", key)
                    values(v, at)
    return spec


def tensor(*, finite: bool = False, dtype=None):
    """A torch tensor (of `dtype` if given; with only finite values if `finite` and floating)."""
    import torch

    expected = "a tensor" + (f" of dtype {dtype}" if dtype is not None else "") + \
        (" of finite values" if finite else "")

    def spec(value, field):
        if not isinstance(value, torch.Tensor) or (dtype is not None and value.dtype != dtype):
            raise Mismatch(field, expected, value)
        if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise Mismatch(field, expected, value, got=f"NaN or Inf in {describe(value)}")
    return spec


# -- files: JSON and torch checkpoints -------------------------------------------------------------


def read_json(path, what: str = "JSON file"):
    """A JSON document; InputError naming the file if it cannot be read or parsed."""
    from pathlib import Path

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a {what}") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or reason(err)})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a {what} (not UTF-8 text)") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not a {what} (invalid JSON at line {err.lineno}, column {err.colno}: "
                         f"{err.msg})") from None
    except RecursionError:
        raise InputError(f"{path}: not a {what} (nested too deeply)") from None


def safe_torch_load(path, what: str = "lossfloor checkpoint"):
    """torch.load with weights_only=True, always: tensors, numbers, strings, lists and dicts, never objects
    that could run code.  Anything else is refused with one line naming the file."""
    import pickle
    import warnings

    import torch

    try:
        open(path, "rb").close()
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or reason(err)})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on foreign pickle protocols
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # the restricted unpickler refused the content
        raise InputError(f"{path}: not a {what}: not a torch file of plain tensors, numbers and dicts (other "
                         "content is refused: loading it could run code)") from None
    except Exception:  # noqa: BLE001 - torch raises EOFError, RuntimeError, ... for damaged files
        raise InputError(f"{path}: not a {what} (empty, truncated, damaged or another format)") from None


# -- schemas ---------------------------------------------------------------------------------------


def check_curve_dict(doc, where: str = "curve") -> None:
    """An optimal-loss curve as `OptimalLossCurve.to_dict` writes it: InputError naming `where` and the
    field otherwise."""
    fields = {
        "sigma": list_of(number(positive=True), min_len=1), "loss": list_of(number()),
        "stderr": list_of(number(lo=0)), "data_variance": number(positive=True),
        "n": number(lo=1, integer=True), "dim": number(lo=1, integer=True),
        "settings": optional(mapping()), "fingerprint": optional(string()),
    }
    validate(doc, mapping(fields, name="an optimal-loss curve (a JSON object)"), where)
    n = len(doc["sigma"])
    for key in ("loss", "stderr"):
        if len(doc[key]) != n:
            raise InputError(f"{where}: field {key!r}: expected a list of {n} (one per sigma), got "
                             f"{describe(doc[key])}")
    if len(set(doc["sigma"])) != n:
        raise InputError(f"{where}: field 'sigma': expected distinct noise levels, got repeated ones")


def check_checkpoint_dict(state, where: str, checkpoint_format: str) -> None:
    """A training checkpoint as `Trainer.state_dict` writes it (weights of finite tensors, the optimizer,
    generator and logging state): InputError naming `where` and the field otherwise."""
    import torch

    weights = mapping(values=tensor(finite=True), name="a state dict (names to tensors)")
    fields = {
        "format": string((checkpoint_format,)), "step": number(lo=0, integer=True),
        "objective": either(string(), mapping(), expected="an objective (a name or an object)"),
        "model": mapping({"kind": string(), "shape": list_of(number(lo=1, integer=True), min_len=1),
                          "width": optional(number(lo=1, integer=True)),
                          "depth": optional(number(lo=1, integer=True))}),
        "data": optional(mapping()), "train": optional(mapping()),
        "net": weights, "ema": weights,
        "optimizer": mapping({"state": mapping(), "param_groups": list_of(mapping())}),
        "generator": tensor(dtype=torch.uint8),
        "binned": mapping({"edges": list_of(number(positive=True), min_len=2),
                           "count": list_of(number(lo=0, integer=True)),
                           "sum": list_of(number(finite=False)), "sum_sq": list_of(number(finite=False)),
                           "outside": number(lo=0, integer=True)}),
        "interval": list_of(number(finite=False), length=2), "elapsed": optional(number(lo=0)),
    }
    if isinstance(state, dict) and state.get("format") != checkpoint_format:
        found = describe(state["format"]) if "format" in state else "missing"
        raise InputError(f"{where}: not a lossfloor checkpoint: field 'format' is {found}, expected "
                         f"{checkpoint_format!r}")
    validate(state, mapping(fields, name="a lossfloor checkpoint (a dict)"), where)


def check_weights(weights: dict, reference: dict, where: str, field: str) -> None:
    """A state dict holds exactly the tensors of `reference` (name -> tensor) with the same shapes."""
    missing = [k for k in reference if k not in weights]
    extra = [k for k in weights if k not in reference]
    if missing or extra:
        names = ", ".join((missing or extra)[:3])
        raise InputError(f"{where}: field {field!r}: {'lacks' if missing else 'has unexpected'} weights "
                         f"{names}{' ...' if len(missing or extra) > 3 else ''} for its model")
    for k, ref in reference.items():
        if tuple(weights[k].shape) != tuple(ref.shape):
            raise InputError(f"{where}: field {field!r}: weight {k} has shape {tuple(weights[k].shape)}, the "
                             f"model needs {tuple(ref.shape)}")
