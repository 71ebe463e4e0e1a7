"""The component registry: processes, densities, weights and preconditioning saved as {"kind": ...,
**params}."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from lossfloor.core.errors import InputError
from lossfloor.objective.legacy import current_form

F64 = torch.float64


def as_f64(x) -> Tensor:
    return torch.as_tensor(x, dtype=F64)


# --------------------------------------------------------------------------------------------
# Components as data: every process, noise density, weight and preconditioning is saved as
# {"kind": <stable name>, **parameters} of plain Python types (a weight without parameters as its name), so
# it goes into JSON and into torch.load(weights_only=True) alike.
# --------------------------------------------------------------------------------------------

COMPONENTS: dict[str, Callable[..., Any]] = {}


def register_component(kind: str):
    """Decorator registering a class (or factory function) under a stable `kind` for `component_from_dict`.

    A registered class gets `kind` as a class attribute.  Its `to_dict()` (from `Component` for a
    dataclass) must return {"kind": kind, **params} of plain types; `component_from_dict` rebuilds it with
    `cls.from_dict(d)` when the class has one, else `factory(**params)`.  Mutable training state (a dynamic
    schedule's) goes under the key "state", which `static_dict` drops when comparing objectives.
    """
    def decorate(factory):
        if COMPONENTS.get(kind, factory) is not factory:
            raise ValueError(f"component kind {kind!r} is already registered to {COMPONENTS[kind]!r}")
        COMPONENTS[kind] = factory
        factory.kind = kind
        return factory
    return decorate


def plain(value) -> Any:
    """`value` as plain Python (floats, ints, str, bool, None, lists, dicts): tensors and arrays to lists."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and numpy scalars
        return plain(value.tolist())
    if hasattr(value, "to_dict"):
        return plain(value.to_dict())
    raise TypeError(f"cannot store {type(value).__name__} as plain data")


class Component:
    """Mixin: `to_dict` / `from_dict` for a registered dataclass (its fields are its parameters)."""

    kind: ClassVar[str] = ""

    def to_dict(self) -> dict:
        """{"kind": kind, **fields} of plain types."""
        if not self.kind or COMPONENTS.get(self.kind) is not type(self):
            raise TypeError(f"{type(self).__name__} is not registered with @register_component")
        return {"kind": self.kind, **{f.name: plain(getattr(self, f.name)) for f in fields(self)}}

    @classmethod
    def from_dict(cls, d: Mapping):
        """The inverse of `to_dict`."""
        return cls(**{k: v for k, v in d.items() if k != "kind"})


def component_to_dict(component) -> dict | str:
    """A component as plain data ({"kind": ...}, or the name of a weight without parameters)."""
    if not hasattr(component, "to_dict"):
        raise TypeError(f"{type(component).__name__} cannot be saved: register it and give it to_dict()")
    return plain(component.to_dict())


def component_from_dict(d: Mapping | str):
    """The inverse of `component_to_dict`: the registered factory of d["kind"] rebuilds the component.

    Names and earlier saved forms are mapped first, in one place (`objective.legacy`).
    """
    d = current_form(d)
    if not isinstance(d, Mapping) or "kind" not in d:
        raise InputError(f"a saved component must be a dict with a 'kind', got {d!r:.80}")
    kind = d["kind"]
    if kind not in COMPONENTS:
        raise InputError(f"unknown component kind {kind!r}; registered: {', '.join(sorted(COMPONENTS))}")
    factory = COMPONENTS[kind]
    from_dict = getattr(factory, "from_dict", None)
    try:
        if isinstance(factory, type) and from_dict is not None:
            return from_dict(d)
        return factory(**{k: v for k, v in d.items() if k != "kind"})
    except TypeError as err:
        raise InputError(f"bad parameters for component {kind!r}: {err}") from err


def static_dict(d):
    """A saved objective or component without its mutable "state" entries (for comparing runs)."""
    if isinstance(d, Mapping):
        return {k: static_dict(v) for k, v in d.items() if k != "state"}
    if isinstance(d, list):
        return [static_dict(v) for v in d]
    return d


def check_positive(**values) -> None:
    for name, value in values.items():
        if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
