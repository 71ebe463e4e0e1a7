"""The unified diffusion formulation: the single home of every conversion.

Every objective is a *process* (alpha_t, sigma_t), a *prediction target*, a *loss weight* (a `Weight`)
and a *noise density* (a `NoiseDensity`, over log sigma or over t).  Everything reduces to VE coordinates

    x~ = x_t / alpha_t = x0 + sigma * eps,    sigma = sigma_t / alpha_t,

with an x0-loss weight lambda(sigma) and a density p(log sigma), so that

    objective loss = E_{p(sigma)} [ lambda(sigma) * ||x0_hat - x0||^2 ].

Each target is affine in x0 for a fixed x_t:  target = a(t) * x_t + b(t) * x0.  That single pair of
coefficients gives the prediction -> x0_hat conversion, the target construction and the squared-error
factor b^2 between the target's loss and the x0 loss.  Schedule arithmetic is done in float64.
`Objective.loss(net, x0)` is the training loss a user can hold (EDM's `EDMLoss`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from lossfloor.core.errors import InputError
from lossfloor.core.registry import Registry, did_you_mean
from lossfloor.objective.components import as_f64, component_from_dict, component_to_dict
from lossfloor.objective.densities import (
    DiscreteUniformT,
    LogSigmaNormal,
    LogSigmaUniform,
    NoiseDensity,
    UniformT,
)
from lossfloor.objective.legacy import check_saved_objective
from lossfloor.objective.loss import loss_from_target, objective_loss, x0_loss_from_target
from lossfloor.objective.processes import VE, VP, Cosine, Flow, Process, ddpm_process, iddpm_process
from lossfloor.objective.targets import TARGETS, Preconditioning, target_error_factor
from lossfloor.objective.weights import NELBO, WEIGHTS, Simple, Weight

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
    time_dist: NoiseDensity
    weight: Weight = field(default_factory=Simple)
    precond: Preconditioning = field(default_factory=Preconditioning)

    def __post_init__(self):
        if self.target not in TARGETS:
            raise InputError(f"unknown target {self.target!r}; choose from {', '.join(TARGETS)}")
        if not hasattr(self.weight, "x0_weight"):
            raise TypeError(f"a weight needs x0_weight(sigma, objective) (Simple(), NELBO(), EDMWeight(), "
                            f"...; by name: WEIGHTS[name]()), got {self.weight!r}")

    # -- noise levels --------------------------------------------------------------------
    def sample_t(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Training times t drawn from the objective's time distribution."""
        return self.time_dist.sample_t(self.process, n, generator)

    def sample_sigma(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """VE noise levels sigma = sigma_t / alpha_t drawn from the objective's distribution."""
        return self.process.ve_sigma(self.sample_t(n, generator))

    def cdf(self, log_sigma: Tensor) -> Tensor:
        """P(log sigma' <= log_sigma)."""
        return self.time_dist.cdf_t(self.process, self.process.t_of_sigma(torch.exp(as_f64(log_sigma))))

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
        ls = as_f64(log_sigma).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            t = self.process.t_of_sigma(torch.exp(ls))
            dt, = torch.autograd.grad(t.sum(), ls)
        return self.time_dist.log_density_t(self.process, t.detach()) + torch.log(dt.abs())

    # -- weights ---------------------------------------------------------------------------
    def x0_weight(self, sigma: Tensor) -> Tensor:
        """lambda(sigma): the weight on ||x0_hat - x0||^2 at VE noise level sigma."""
        return self.weight.x0_weight(as_f64(sigma), self)

    def target_weight(self, t: Tensor) -> Tensor:
        """The weight on the native target's squared error at time t."""
        s = self.process.ve_sigma(t)
        return self.x0_weight(s) / target_error_factor(self.target, self.process, t, self.precond)

    # -- the training loss -------------------------------------------------------------------
    def loss(self, net: Callable[[Tensor, Tensor], Tensor], x0: Tensor, t: Tensor | None = None,
             eps: Tensor | None = None, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(training loss, x0 loss) per sample, unreduced: what `Trainer` minimises (its mean) and logs.

        net(c_in x~, c_noise) is read as the objective's target (the network of a `Denoiser`); x0: clean
        data (B, ...); t: process times (default drawn from the noise density); eps: standard normal noise
        of x0's shape (default drawn).  Both draws use `generator`, t first.  The training loss is the
        squared error on the target times the target-space weight (EDM2's learned u: e^-u loss + u); the x0
        loss ||x0_hat - x0||^2 / D is that error over b(t)^2 (float64, detached).
        """
        return objective_loss(self, net, x0, t, eps, generator)

    def loss_from_target(self, t: Tensor, target_loss: Tensor, sigma: Tensor | None = None) -> Tensor:
        """The per-sample training loss from a per-sample squared error on the target at times t."""
        return loss_from_target(self, t, target_loss, sigma)

    def x0_loss_from_target(self, t: Tensor, target_loss: Tensor) -> Tensor:
        """The per-sample x0 loss ||x0_hat - x0||^2 / D from a squared error on the target at times t."""
        return x0_loss_from_target(self, t, target_loss)

    # -- training hooks: no-ops unless the weight or the density learns ----------------------------
    @property
    def is_dynamic(self) -> bool:
        """True when training changes the objective's state (an adaptive density, a learned weight)."""
        return any(hasattr(p, "update") or hasattr(p, "augment") for p in (self.weight, self.time_dist))

    def parameters(self) -> list[nn.Parameter]:
        """Parameters trained alongside the model (EDM2's u(sigma)); [] for most objectives."""
        return [p for part in (self.weight, self.time_dist) if hasattr(part, "parameters")
                for p in part.parameters()]

    def augment(self, sigma: Tensor, loss: Tensor) -> Tensor:
        """The per-sample training loss from the weighted loss (EDM2: loss e^{-u} + u; else unchanged)."""
        for part in (self.weight, self.time_dist):
            if hasattr(part, "augment"):
                loss = part.augment(sigma, loss)
        return loss

    def update(self, sigma: Tensor, x0_loss: Tensor) -> None:
        """Feed per-sample x0 losses at VE sigma to the dynamic parts (after each optimisation step)."""
        for part in (self.weight, self.time_dist):
            if hasattr(part, "update"):
                part.update(sigma, x0_loss)

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
        """The inverse of `to_dict`; ValueError for anything that is not a saved objective.  Earlier saved
        forms of weights and densities load through `objective.legacy`."""
        if not isinstance(d, Mapping) or d.get("format") != OBJECTIVE_FORMAT:
            raise InputError(f"not a saved objective (expected format {OBJECTIVE_FORMAT!r})")
        missing = [k for k in ("name", "process", "target", "weight", "time_dist", "precond") if k not in d]
        if missing:
            raise InputError(f"saved objective {d.get('name')!r} lacks {', '.join(missing)}")
        check_saved_objective(d)
        return cls(str(d["name"]), component_from_dict(d["process"]), d["target"],
                   component_from_dict(d["time_dist"]), component_from_dict(d["weight"]),
                   component_from_dict(d["precond"]))


PRESETS = Registry("objective")
"""The named mainstream formulations, each with the defaults of its paper: name -> factory()."""
PRESETS.add("edm", lambda: Objective("edm", VE(), "F", LogSigmaNormal(-1.2, 1.2)),
            "EDM (Karras et al. 2022): VE, F-prediction, log sigma ~ N(-1.2, 1.2^2)")
PRESETS.add("edm2", lambda: Objective("edm2", VE(), "F", LogSigmaNormal(-0.4, 1.0)),
            "EDM2 (Karras et al. 2024): VE, F-prediction, log sigma ~ N(-0.4, 1)")
PRESETS.add("ve", lambda: Objective("ve", VE(), "eps", LogSigmaUniform(0.02, 100.0)),
            "VE / NCSN++ (Song et al. 2021): eps-prediction, log sigma ~ U(log 0.02, log 100)")
PRESETS.add("vp", lambda: Objective("vp", VP(), "eps", UniformT(1e-5, 1.0)),
            "continuous VP (Song et al. 2021): eps-prediction, t ~ U(1e-5, 1)")
PRESETS.add("ddpm", lambda: Objective("ddpm", ddpm_process(), "eps", DiscreteUniformT(1000)),
            "DDPM (Ho et al. 2020): linear betas, eps-prediction, 1000 discrete steps")
PRESETS.add("iddpm", lambda: Objective("iddpm", iddpm_process(), "eps", DiscreteUniformT(1000)),
            "improved DDPM (Nichol & Dhariwal 2021): cosine alpha_bar, eps-prediction, 1000 steps")
PRESETS.add("cosine", lambda: Objective("cosine", Cosine(), "eps", UniformT(0.0, 1.0)),
            "continuous cosine VP: eps-prediction, t ~ U(0, 1)")
PRESETS.add("flow", lambda: Objective("flow", Flow(), "velocity", UniformT(0.0, 1.0)),
            "rectified flow / flow matching: velocity, t ~ U(0, 1)")
PRESETS.add("sd3", lambda: Objective("sd3", Flow(), "velocity", LogSigmaNormal(0.0, 1.0)),
            "SD3 (Esser et al. 2024): flow, velocity, logit-normal t, i.e. log sigma ~ N(0, 1)")


def objective_names() -> list[str]:
    """Preset names; any `<preset>-<target>-<weight>` combination is also accepted."""
    return PRESETS.names()


def _registered_case(part: str, names) -> str:
    """`part` as spelled in `names` where only its case differs (`EDM` -> `edm`, `f` -> `F`), else as is."""
    return part if part in names else next((n for n in names if n.lower() == part.lower()), part)


def get_objective(name: str) -> Objective:
    """An objective by name: a preset (`edm`) or `<preset>-<target>-<weight>` (`cosine-v-nelbo`)."""
    if name not in PRESETS:  # `EDM`, `Flow-v-Simple`: each part's case as registered (x0, F, simple)
        parts = name.split("-")
        kinds = (PRESETS, TARGETS, WEIGHTS)
        name = "-".join([_registered_case(p, n) for p, n in zip(parts, kinds, strict=False)] + parts[3:])
    base, *rest = name.split("-")
    if base not in PRESETS or len(rest) not in (0, 2):
        hint = did_you_mean(base, PRESETS) if base not in PRESETS else ""
        raise InputError(
            f"unknown objective {name!r}{hint}; use one of {', '.join(PRESETS)} or "
            f"<preset>-<target>-<weight> with target in {{{', '.join(TARGETS)}}} "
            f"and weight in {{{', '.join(WEIGHTS)}}}")
    if rest and rest[1] not in WEIGHTS:
        raise InputError(f"unknown weight {rest[1]!r}{did_you_mean(rest[1], WEIGHTS)} in objective {name!r}; "
                         "choose from "
                         f"{', '.join(WEIGHTS)}")
    obj = PRESETS[base]()
    if rest:
        obj = obj.with_(name=name, target=rest[0], weight=WEIGHTS[rest[1]]())
        if obj.is_discrete and isinstance(obj.weight, NELBO):
            raise InputError(f"{name}: the NELBO weight needs a continuous-time process")
    return obj
