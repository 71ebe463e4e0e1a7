"""The library's Python warnings as one clean `warning: ...` line each on stderr, with the library's remedy
(an API name, another command's option) replaced by one that applies to the command that ran."""

from __future__ import annotations

import contextlib
import re
import warnings

import click

# The library's remedies (floor/totals.py, floor/estimator.py) as regular expressions.
GRID_REMEDY = (r"add levels where lambda p J\* changes fastest \(OptimalLossCurve\.refinement_scores\) "
               r"or use estimate --total-stderr")
SIGMA_MIN_REMEDY = r"lower --sigma-min to (\S+) or below"

# Per command (its first word, `study` for every study): what the user can do there instead.
REMEDIES = {
    "diagnose": {GRID_REMEDY: "raise --levels, or pass --curve from `lossfloor estimate --total-stderr ...`"},
    "diagnose --curve": {
        GRID_REMEDY: "re-estimate the --curve with `lossfloor estimate --total-stderr ...` (more levels)",
        SIGMA_MIN_REMEDY: r"re-estimate the --curve with `lossfloor estimate --sigma-min \1`"},
    "study": {GRID_REMEDY: "the study's sigma grid is fixed by its budget; the total's ± includes this error",
              SIGMA_MIN_REMEDY: "the study's sigma grid is fixed by its budget; the total's ± includes this "
                                r"error (a grid down to sigma = \1 would remove it)"},
    "estimate": {GRID_REMEDY: "pass --total-stderr, or more --num-sigmas"},
}


def for_command(message: str, command: str) -> str:
    """`message` on one line, with the library's remedies replaced by `command`'s."""
    text = " ".join(str(message).split())
    for pattern, remedy in REMEDIES.get(command, {}).items():
        text = re.sub(pattern, remedy, text)
    return text


def warning_lines(caught, command: str) -> list[str]:
    """One `warning: ...` line per distinct warning in `caught` (from `warnings.catch_warnings(record=True)`),
    whitespace folded and the remedy made `command`'s."""
    out = []
    for record in caught:
        line = f"warning: {for_command(record.message, command)}"
        if line not in out:
            out.append(line)
    return out


@contextlib.contextmanager
def clean_warnings(command: str):
    """Record the warnings raised inside and print them as `warning_lines` on stderr at the end (also when
    the command fails)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield caught
        finally:
            for line in warning_lines(caught, command):
                click.echo(line, err=True)
