"""The unified diffusion formulation: the single home of every conversion.

Every objective is a *process* (alpha_t, sigma_t), a *prediction target*, a *loss weight* and a
*noise-level distribution* over t.  Everything reduces to VE coordinates

    x~ = x_t / alpha_t = x0 + sigma * eps,    sigma = sigma_t / alpha_t,

with an x0-loss weight lambda(sigma) and a density p(log sigma), so that

    objective loss = E_{p(sigma)} [ lambda(sigma) * ||x0_hat - x0||^2 ].

Each target is affine in x0 for a fixed x_t:  target = a(t) * x_t + b(t) * x0.  That single pair of
coefficients gives the prediction -> x0_hat conversion, the target construction and the squared-error
factor b^2 between the target's loss and the x0 loss.  Schedule arithmetic is done in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from lossfloor.core.errors import InputError
from lossfloor.objective.components import _t64, component_from_dict, component_to_dict
from lossfloor.objective.densities import (
    DiscreteUniformT,
    LogitNormalT,
    LogNormalT,
    LogUniformT,
    TimeDistribution,
    UniformT,
)
from lossfloor.objective.processes import VE, VP, Cosine, Flow, Process, ddpm_process, iddpm_process
from lossfloor.objective.targets import TARGETS, Preconditioning, target_error_factor
from lossfloor.objective.weights import WEIGHTS, nelbo_log_sigma_weight

# --------------------------------------------------------------------------------------------
# Objectives.
# --------------------------------------------------------------------------------------------


OBJECTIVE_FORMAT = "lossfloor-objective-1"


@dataclass(frozen=True)
class Objective:
    """A diffusion training objective, reducible to lambda(sigma) and p(log sigma) in VE/x0 terms."""

    name: str
    process: Process
    target: str
    time_dist: TimeDistribution
    weight: str = "simple"
    precond: Preconditioning = field(default_factory=Preconditioning)

    def __post_init__(self):
        if self.target not in TARGETS:
            raise InputError(f"unknown target {self.target!r}; choose from {', '.join(TARGETS)}")
        if isinstance(self.weight, str) and self.weight not in WEIGHTS:
            raise InputError(f"unknown weight {self.weight!r}; choose from {', '.join(WEIGHTS)}")
        if not isinstance(self.weight, str) and not hasattr(self.weight, "x0_weight"):
            raise TypeError(f"a weight object needs x0_weight(sigma, objective), got "
                            f"{type(self.weight).__name__}")

    # -- noise levels --------------------------------------------------------------------
    def sample_t(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Training times t drawn from the objective's time distribution."""
        return self.time_dist.sample(n, generator)

    def sample_sigma(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """VE noise levels sigma = sigma_t / alpha_t drawn from the objective's distribution."""
        return self.process.ve_sigma(self.sample_t(n, generator))

    def cdf(self, log_sigma: Tensor) -> Tensor:
        """P(log sigma' <= log_sigma)."""
        return self.time_dist.cdf(self.process.t_of_sigma(torch.exp(_t64(log_sigma))))

    @property
    def is_discrete(self) -> bool:
        return self.time_dist.atoms is not None

    def atoms(self) -> Tensor:
        """Discrete support in sigma (equal probability each); only for discrete objectives."""
        return self.process.ve_sigma(self.time_dist.atoms)

    def log_density(self, log_sigma: Tensor) -> Tensor:
        """log p(log sigma): density with respect to log sigma."""
        if self.is_discrete:
            raise ValueError(f"{self.name}: a discrete noise distribution has atoms, not a density")
        ls = _t64(log_sigma).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            t = self.process.t_of_sigma(torch.exp(ls))
            dt, = torch.autograd.grad(t.sum(), ls)
        return self.time_dist.log_density(t.detach()) + torch.log(dt.abs())

    # -- weights ---------------------------------------------------------------------------
    def x0_weight(self, sigma: Tensor) -> Tensor:
        """lambda(sigma): the weight on ||x0_hat - x0||^2 at VE noise level sigma."""
        s = _t64(sigma)
        if not isinstance(self.weight, str):  # a schedule's weight object (lossfloor.train.schedules)
            return self.weight.x0_weight(s, self)
        t = self.process.t_of_sigma(s)
        if self.weight == "simple":
            return target_error_factor(self.target, self.process, t, self.precond)
        # Under any sampling density p(log sigma) the NELBO's x0 weight is its per-log-sigma weight / p.
        return nelbo_log_sigma_weight(s) * torch.exp(-self.log_density(torch.log(s)))

    def target_weight(self, t: Tensor) -> Tensor:
        """The weight on the native target's squared error at time t."""
        s = self.process.ve_sigma(t)
        return self.x0_weight(s) / target_error_factor(self.target, self.process, t, self.precond)

    def with_(self, **changes) -> Objective:
        """A copy with some fields replaced (e.g. another target or weight)."""
        return replace(self, **changes)

    # -- as data ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Everything that defines the objective, as plain data (JSON and torch.load(weights_only=True))."""
        return {"format": OBJECTIVE_FORMAT, "name": self.name, "process": component_to_dict(self.process),
                "target": self.target, "weight": component_to_dict(self.weight),
                "time_dist": component_to_dict(self.time_dist), "precond": component_to_dict(self.precond)}

    @classmethod
    def from_dict(cls, d: Mapping) -> Objective:
        """The inverse of `to_dict`; ValueError for anything that is not a saved objective."""
        if not isinstance(d, Mapping) or d.get("format") != OBJECTIVE_FORMAT:
            raise InputError(f"not a saved objective (expected format {OBJECTIVE_FORMAT!r})")
        missing = [k for k in ("name", "process", "target", "weight", "time_dist", "precond") if k not in d]
        if missing:
            raise InputError(f"saved objective {d.get('name')!r} lacks {', '.join(missing)}")
        return cls(str(d["name"]), component_from_dict(d["process"]), d["target"],
                   component_from_dict(d["time_dist"]), component_from_dict(d["weight"]),
                   component_from_dict(d["precond"]))


# The named mainstream formulations, each with the defaults of its paper.
PRESETS: dict[str, Callable[[], Objective]] = {
    "edm": lambda: Objective("edm", VE(), "F", LogNormalT(-1.2, 1.2)),
    "edm2": lambda: Objective("edm2", VE(), "F", LogNormalT(-0.4, 1.0)),
    "ve": lambda: Objective("ve", VE(), "eps", LogUniformT(0.02, 100.0)),
    "vp": lambda: Objective("vp", VP(), "eps", UniformT(1e-5, 1.0)),
    "ddpm": lambda: Objective("ddpm", ddpm_process(), "eps", DiscreteUniformT(1000)),
    "iddpm": lambda: Objective("iddpm", iddpm_process(), "eps", DiscreteUniformT(1000)),
    "cosine": lambda: Objective("cosine", Cosine(), "eps", UniformT(0.0, 1.0)),
    "flow": lambda: Objective("flow", Flow(), "velocity", UniformT(0.0, 1.0)),
    "sd3": lambda: Objective("sd3", Flow(), "velocity", LogitNormalT(0.0, 1.0)),
}


def objective_names() -> list[str]:
    """Preset names; any `<preset>-<target>-<weight>` combination is also accepted."""
    return list(PRESETS)


def get_objective(name: str) -> Objective:
    """An objective by name: a preset (`edm`) or `<preset>-<target>-<weight>` (`cosine-v-nelbo`)."""
    base, *rest = name.split("-")
    if base not in PRESETS or len(rest) not in (0, 2):
        raise InputError(
            f"unknown objective {name!r}; use one of {', '.join(PRESETS)} or "
            f"<preset>-<target>-<weight> with target in {{{', '.join(TARGETS)}}} "
            f"and weight in {{{', '.join(WEIGHTS)}}}")
    obj = PRESETS[base]()
    if rest:
        obj = obj.with_(name=name, target=rest[0], weight=rest[1])
        if obj.is_discrete and obj.weight == "nelbo":
            raise InputError(f"{name}: the NELBO weight needs a continuous-time process")
    return obj


def load_objective(saved: Mapping | str) -> Objective:
    """A saved objective: `Objective.to_dict()` output, or (files written before it existed) a name for
    `get_objective`, which gives the named preset's defaults, not any later change to them."""
    return get_objective(saved) if isinstance(saved, str) else Objective.from_dict(saved)
