"""`Registry`: name -> factory plus a one-line description; every CLI choice list comes from one."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from lossfloor.core.errors import InputError


@dataclass
class Registry:
    """Named factories of one kind (objectives, schedules, estimators, ...), in the order added."""

    kind: str
    entries: dict[str, tuple[Callable, str]] = field(default_factory=dict)

    def add(self, name: str, factory: Callable, description: str = "") -> Callable:
        """Register `factory` under `name`; a name is registered once."""
        if name in self.entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self.entries[name] = (factory, description)
        return factory

    def register(self, name: str, description: str = "") -> Callable[[Callable], Callable]:
        """Decorator form of `add`."""
        return lambda factory: self.add(name, factory, description)

    def __getitem__(self, name: str) -> Callable:
        if name not in self.entries:
            raise KeyError(f"unknown {self.kind} {name!r}{did_you_mean(name, self.entries)}; choose from "
                           f"{', '.join(self.entries)}")
        return self.entries[name][0]

    def require(self, name: str) -> Callable:
        """The factory under `name` (a user's choice), or an `InputError` that names the choices."""
        if name not in self.entries:
            raise InputError(f"unknown {self.kind} {name!r}{did_you_mean(name, self.entries)}; choose from "
                             f"{', '.join(self.entries)}")
        return self.entries[name][0]

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        return list(self.entries)

    def description(self, name: str) -> str:
        return self.entries[name][1]

    def summary(self, separator: str = "; ") -> str:
        """Every entry as "name: description" (a CLI option's help)."""
        return separator.join(f"{name}: {text}" if text else name for name, (_, text) in self.entries.items())


def did_you_mean(name, choices: Iterable[str]) -> str:
    """" (did you mean 'edm'?)" for the closest of `choices` to a mistyped `name` (a different case, a
    near-miss spelling: `difflib`), else ""."""
    choices = [str(c) for c in choices]
    text = str(name)
    same_case = [c for c in choices if c.lower() == text.lower()]
    close = same_case or difflib.get_close_matches(text.lower(), choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
