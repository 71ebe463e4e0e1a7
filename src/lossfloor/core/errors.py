"""`InputError`: bad user input (a file or an option), reported as one line and exit code 2."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input (a file or an option): one line naming it, reported with exit code 2."""


def reason(err: BaseException) -> str:
    """The first line of a library's error message, without advice to load untrusted data unsafely."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    if "pickle" in text.lower() or "weights_only" in text:
        return "it holds Python objects, which are never loaded: they could run code"
    return text.rstrip(".")
