"""Saved forms of weights and noise densities, old and current: the one place files are mapped to classes.

Weights and noise densities are one family each now (`objective.weights`, `objective.densities`); files
written before that (every result under results/, every earlier checkpoint) still load:

- A weight without parameters is saved as its name, "simple" or "nelbo" (as it always was); it loads as
  `Simple()` / `NELBO()`.
- Densities over log sigma carried their process ({"kind": "log_sigma_normal", "process": ...}); the
  objective supplies it now, so the entry is dropped.  Two classes described one distribution:
  "log_sigma_normal" and SD3's "logitnormal" (t = sigmoid(u) on flow, where log sigma = logit t = u) load
  as "lognormal", log sigma ~ N(mean, std^2).  "logitnormal" with another process is refused.
- "lognormal" and "loguniform" read log t before; every objective lossfloor built with them (the edm,
  edm2 and ve presets, diffusers' EDM schedulers) has the VE process, where t is sigma, so those files
  mean what they meant.  (One built by hand on another process now reads log sigma.)
"""

from __future__ import annotations

from collections.abc import Mapping

from lossfloor.core.errors import InputError

NAMED_KINDS = ("simple", "nelbo")
"""Components saved as their bare name (weights without parameters)."""

KIND_ALIASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "log_sigma_normal": ("lognormal", ("process",)),
    "logitnormal": ("lognormal", ()),
    "log_sigma_logistic": ("log_sigma_logistic", ("process",)),
    "log_snr_laplace": ("log_snr_laplace", ("process",)),
    "adaptive": ("adaptive", ("process",)),
}
"""Saved kind -> (kind now, saved parameters no longer taken)."""


def current_form(saved: Mapping | str) -> Mapping:
    """A saved component in today's form: {"kind": ..., **params}."""
    if isinstance(saved, str):
        if saved not in NAMED_KINDS:
            raise InputError(f"unknown named component {saved!r}; named ones: {', '.join(NAMED_KINDS)}")
        return {"kind": saved}
    if isinstance(saved, Mapping) and saved.get("kind") in KIND_ALIASES:
        kind, dropped = KIND_ALIASES[saved["kind"]]
        return {**{k: v for k, v in saved.items() if k not in dropped}, "kind": kind}
    return saved


def check_saved_objective(saved: Mapping) -> None:
    """Refuse, in one line, a saved objective whose meaning changed (SD3's logit-normal off flow)."""
    time_dist, process = saved.get("time_dist"), saved.get("process")
    if (isinstance(time_dist, Mapping) and time_dist.get("kind") == "logitnormal"
            and not (isinstance(process, Mapping) and process.get("kind") == "flow")):
        raise InputError(f"saved objective {saved.get('name')!r}: the logit-normal time density is now "
                         "log sigma ~ N(mean, std^2), the same only for the flow process; rebuild it")
