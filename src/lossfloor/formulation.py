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

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import torch

Tensor = torch.Tensor
F64 = torch.float64


def _t64(x) -> Tensor:
    return torch.as_tensor(x, dtype=F64)


# --------------------------------------------------------------------------------------------
# Components as data: every process, time distribution and preconditioning (and the weights and noise
# densities of `lossfloor.schedules`) is saved as {"kind": <stable name>, **parameters} of plain
# Python types, so it goes into JSON and into torch.load(weights_only=True) alike.
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
    """A component as plain data; a string (a named weight such as "simple") stays a string."""
    if isinstance(component, str):
        return component
    if not hasattr(component, "to_dict"):
        raise TypeError(f"{type(component).__name__} cannot be saved: register it and give it to_dict()")
    return plain(component.to_dict())


def component_from_dict(d: Mapping | str):
    """The inverse of `component_to_dict`: the registered factory of d["kind"] rebuilds the component."""
    if isinstance(d, str):
        return d
    if not isinstance(d, Mapping) or "kind" not in d:
        raise ValueError(f"a saved component must be a dict with a 'kind', got {d!r:.80}")
    kind = d["kind"]
    if kind not in COMPONENTS:
        raise ValueError(f"unknown component kind {kind!r}; registered: {', '.join(sorted(COMPONENTS))}")
    factory = COMPONENTS[kind]
    from_dict = getattr(factory, "from_dict", None)
    try:
        if isinstance(factory, type) and from_dict is not None:
            return from_dict(d)
        return factory(**{k: v for k, v in d.items() if k != "kind"})
    except TypeError as err:
        raise ValueError(f"bad parameters for component {kind!r}: {err}") from err


def static_dict(d):
    """A saved objective or component without its mutable "state" entries (for comparing runs)."""
    if isinstance(d, Mapping):
        return {k: static_dict(v) for k, v in d.items() if k != "state"}
    if isinstance(d, list):
        return [static_dict(v) for v in d]
    return d


# --------------------------------------------------------------------------------------------
# Processes: x_t = alpha(t) x0 + sigma(t) eps.  ve_sigma(t) = sigma/alpha is increasing in t.
# --------------------------------------------------------------------------------------------


class Process(Component):
    """A forward process; subclasses give alpha(t), sigma(t) and the inverse of sigma/alpha."""

    name: str = "process"
    t_min: float = 0.0
    t_max: float = 1.0

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def t_of_sigma(self, ve_sigma: Tensor) -> Tensor:
        """Inverse of `ve_sigma`: the time at which sigma_t / alpha_t equals ve_sigma."""
        raise NotImplementedError

    def ve_sigma(self, t: Tensor) -> Tensor:
        """VE noise level sigma_t / alpha_t (inverse square root of the SNR)."""
        t = _t64(t)
        return self.sigma(t) / self.alpha(t)

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(d alpha/dt, d sigma/dt) by autograd, so each process is written once."""
        t = _t64(t).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            return _grad(self.alpha(t), t), _grad(self.sigma(t), t)


def _grad(y: Tensor, t: Tensor) -> Tensor:
    """Elementwise dy/dt; zero where y does not depend on t (e.g. VE's constant alpha)."""
    if not y.requires_grad:
        return torch.zeros_like(t).detach()
    g, = torch.autograd.grad(y.sum(), t, allow_unused=True, materialize_grads=True)
    return g.detach()


@register_component("ve")
@dataclass(frozen=True)
class VE(Process):
    """Variance exploding: alpha = 1, sigma = t (t *is* the noise level)."""

    name = "ve"
    t_max = math.inf

    def alpha(self, t):
        return torch.ones_like(_t64(t))

    def sigma(self, t):
        return _t64(t) * 1.0

    def t_of_sigma(self, ve_sigma):
        return _t64(ve_sigma) * 1.0


@register_component("vp")
@dataclass(frozen=True)
class VP(Process):
    """Song et al. continuous VP: alpha_bar = exp(-beta_d t^2 / 2 - beta_min t)."""

    beta_min: float = 0.1
    beta_d: float = 19.9
    name = "vp"

    def _log_abar(self, t):
        t = _t64(t)
        return -0.5 * self.beta_d * t**2 - self.beta_min * t

    def alpha(self, t):
        return torch.exp(0.5 * self._log_abar(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(self._log_abar(t)))

    def t_of_sigma(self, ve_sigma):
        c = torch.log1p(_t64(ve_sigma) ** 2)
        return (torch.sqrt(self.beta_min**2 + 2 * self.beta_d * c) - self.beta_min) / self.beta_d


@register_component("cosine")
@dataclass(frozen=True)
class Cosine(Process):
    """Plain cosine VP: alpha = cos(pi t / 2), sigma = sin(pi t / 2)."""

    name = "cosine"

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * _t64(t))

    def sigma(self, t):
        return torch.sin(0.5 * math.pi * _t64(t))

    def t_of_sigma(self, ve_sigma):
        return torch.atan(_t64(ve_sigma)) * (2 / math.pi)


@register_component("flow")
@dataclass(frozen=True)
class Flow(Process):
    """Rectified flow / flow matching: x_t = (1 - t) x0 + t eps."""

    name = "flow"

    def alpha(self, t):
        return 1.0 - _t64(t)

    def sigma(self, t):
        return _t64(t) * 1.0

    def t_of_sigma(self, ve_sigma):
        s = _t64(ve_sigma)
        return s / (1.0 + s)


@register_component("discrete")
class Discrete(Process):
    """A discrete-time VP process given by alpha_bar at t = j/T, j = 1..T.

    Between grid points log alpha_bar is interpolated linearly in t (alpha_bar(0) = 1), which makes
    alpha, sigma and their derivatives defined everywhere; the noise distribution only samples the grid.
    `recipe` is the registered factory call that built it ({"kind": "ddpm", ...}); it is what `to_dict`
    saves, else alpha_bar itself.
    """

    def __init__(self, alpha_bar, name: str = "discrete", recipe: dict | None = None):
        self.name = name
        self.recipe = recipe
        self.alpha_bar = _t64(alpha_bar)
        self.steps = len(alpha_bar)
        self._grid_t = torch.arange(0, self.steps + 1, dtype=F64) / self.steps
        self._log_abar = torch.cat([torch.zeros(1, dtype=F64), torch.log(_t64(alpha_bar))])
        # log(1 + sigma~^2) = -log alpha_bar is increasing on the grid: invert by interpolation.
        self._log1p_s2 = -self._log_abar

    def _interp(self, x, xp, fp):
        x = _t64(x)
        idx = torch.searchsorted(xp, x.clamp(xp[0], xp[-1]).detach()).clamp(1, len(xp) - 1)
        x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
        return f0 + (f1 - f0) * (x - x0) / (x1 - x0)

    def _log_abar_at(self, t):
        return self._interp(t, self._grid_t, self._log_abar)

    def alpha(self, t):
        return torch.exp(0.5 * self._log_abar_at(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(self._log_abar_at(t)))

    def t_of_sigma(self, ve_sigma):
        return self._interp(torch.log1p(_t64(ve_sigma) ** 2), self._log1p_s2, self._grid_t)

    def to_dict(self) -> dict:
        """Its recipe ({"kind": "ddpm", ...}) when it has one, else {"kind": "discrete", alpha_bar, name}."""
        if self.recipe is not None:
            return plain(self.recipe)
        return {"kind": "discrete", "alpha_bar": self.alpha_bar.tolist(), "name": self.name}

    @classmethod
    def from_dict(cls, d: Mapping) -> Discrete:
        return cls(d["alpha_bar"], d.get("name", "discrete"))


@register_component("ddpm")
def ddpm_process(beta_start: float = 1e-4, beta_end: float = 0.02, steps: int = 1000) -> Discrete:
    """Ho et al. DDPM: linear beta from 1e-4 to 0.02 over T = 1000 steps."""
    betas = torch.linspace(beta_start, beta_end, steps, dtype=F64)
    recipe = dict(kind="ddpm", beta_start=beta_start, beta_end=beta_end, steps=steps)
    return Discrete(torch.cumprod(1 - betas, 0), "ddpm", recipe)


@register_component("iddpm")
def iddpm_process(s: float = 0.008, steps: int = 1000, max_beta: float = 0.999) -> Discrete:
    """Nichol & Dhariwal cosine schedule, alpha_bar(t) = f(t)/f(0), betas clipped at 0.999."""
    f = lambda t: torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    t = torch.arange(steps + 1, dtype=F64) / steps
    abar = f(t) / f(t[:1])
    betas = (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)
    recipe = dict(kind="iddpm", s=s, steps=steps, max_beta=max_beta)
    return Discrete(torch.cumprod(1 - betas, 0), "iddpm", recipe)


# --------------------------------------------------------------------------------------------
# Noise-level distributions over t (the process maps t to sigma).
# --------------------------------------------------------------------------------------------


class TimeDistribution(Component):
    """A distribution of t: sampling, CDF and density (or atoms, for discrete ones)."""

    atoms: Tensor | None = None  # discrete support in t, uniform probability

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def cdf(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def log_density(self, t: Tensor) -> Tensor:
        raise NotImplementedError


@register_component("uniform")
@dataclass(frozen=True)
class UniformT(TimeDistribution):
    """t ~ U(lo, hi)."""

    lo: float = 0.0
    hi: float = 1.0

    def sample(self, n, generator=None):
        return self.lo + (self.hi - self.lo) * torch.rand(n, generator=generator, dtype=F64)

    def cdf(self, t):
        return ((_t64(t) - self.lo) / (self.hi - self.lo)).clamp(0, 1)

    def log_density(self, t):
        t = _t64(t)
        inside = (t >= self.lo) & (t <= self.hi)
        return torch.where(inside, -math.log(self.hi - self.lo), -math.inf)


@register_component("discrete_uniform")
@dataclass(frozen=True)
class DiscreteUniformT(TimeDistribution):
    """t = j / T with j ~ U{1..T} (DDPM-style integer timesteps)."""

    steps: int = 1000

    @property
    def atoms(self):
        return torch.arange(1, self.steps + 1, dtype=F64) / self.steps

    def sample(self, n, generator=None):
        j = torch.randint(1, self.steps + 1, (n,), generator=generator)
        return j.to(F64) / self.steps

    def cdf(self, t):
        return (torch.floor(_t64(t) * self.steps + 1e-9) / self.steps).clamp(0, 1)


@register_component("lognormal")
@dataclass(frozen=True)
class LogNormalT(TimeDistribution):
    """log t ~ N(mean, std^2); with the VE process t is sigma (EDM's P_mean, P_std)."""

    mean: float = -1.2
    std: float = 1.2

    def sample(self, n, generator=None):
        return torch.exp(self.mean + self.std * torch.randn(n, generator=generator, dtype=F64))

    def cdf(self, t):
        z = (torch.log(_t64(t)) - self.mean) / self.std
        return 0.5 * torch.erfc(-z / math.sqrt(2))

    def log_density(self, t):
        lt = torch.log(_t64(t))
        z = (lt - self.mean) / self.std
        return -0.5 * z**2 - math.log(self.std * math.sqrt(2 * math.pi)) - lt


@register_component("loguniform")
@dataclass(frozen=True)
class LogUniformT(TimeDistribution):
    """log t ~ U(log lo, log hi) (VE / NCSN++)."""

    lo: float = 0.02
    hi: float = 100.0

    def sample(self, n, generator=None):
        u = torch.rand(n, generator=generator, dtype=F64)
        return torch.exp(math.log(self.lo) + u * math.log(self.hi / self.lo))

    def cdf(self, t):
        return (torch.log(_t64(t) / self.lo) / math.log(self.hi / self.lo)).clamp(0, 1)

    def log_density(self, t):
        t = _t64(t)
        inside = (t >= self.lo) & (t <= self.hi)
        return torch.where(inside, -torch.log(t) - math.log(math.log(self.hi / self.lo)), -math.inf)


@register_component("logitnormal")
@dataclass(frozen=True)
class LogitNormalT(TimeDistribution):
    """t = sigmoid(u), u ~ N(mean, std^2) (SD3)."""

    mean: float = 0.0
    std: float = 1.0

    def sample(self, n, generator=None):
        return torch.sigmoid(self.mean + self.std * torch.randn(n, generator=generator, dtype=F64))

    def cdf(self, t):
        z = (torch.logit(_t64(t)) - self.mean) / self.std
        return 0.5 * torch.erfc(-z / math.sqrt(2))

    def log_density(self, t):
        t = _t64(t)
        z = (torch.logit(t) - self.mean) / self.std
        return -0.5 * z**2 - math.log(self.std * math.sqrt(2 * math.pi)) - torch.log(t * (1 - t))


# --------------------------------------------------------------------------------------------
# Targets: each is affine in x0 for fixed x_t, target = a x_t + b x0.
# --------------------------------------------------------------------------------------------

TARGETS = ("x0", "eps", "v", "score", "velocity", "F")
WEIGHTS = ("simple", "nelbo")


@register_component("edm_precond")
@dataclass(frozen=True)
class Preconditioning(Component):
    """EDM preconditioning in VE coordinates; the network sees c_in * x~ and c_noise."""

    sigma_data: float = 0.5

    def c_skip(self, s):
        return self.sigma_data**2 / (s**2 + self.sigma_data**2)

    def c_out(self, s):
        return s * self.sigma_data / torch.sqrt(s**2 + self.sigma_data**2)

    def c_in(self, s):
        return 1 / torch.sqrt(s**2 + self.sigma_data**2)

    def c_noise(self, s):
        return torch.log(s) / 4


def target_coefficients(target: str, process: Process, t: Tensor,
                        precond: Preconditioning = Preconditioning()) -> tuple[Tensor, Tensor]:
    """(a, b) with target = a * x_t + b * x0 at time t."""
    t = _t64(t)
    al, si = process.alpha(t), process.sigma(t)
    if target == "x0":
        return torch.zeros_like(t), torch.ones_like(t)
    if target == "eps":  # eps = (x_t - alpha x0) / sigma
        return 1 / si, -al / si
    if target == "v":  # v = alpha eps - sigma x0 (Salimans & Ho)
        return al / si, -(al**2 + si**2) / si
    if target == "score":  # grad log p(x_t | x0) = -eps / sigma
        return -1 / si**2, al / si**2
    if target == "velocity":  # d x_t / dt = alpha' x0 + sigma' eps
        da, ds = process.derivatives(t)
        return ds / si, da - ds * al / si
    if target == "F":  # x0 = c_skip x~ + c_out F, x~ = x_t / alpha
        s = si / al
        c_out = precond.c_out(s)
        return -precond.c_skip(s) / (al * c_out), 1 / c_out
    raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")


def per_sample(c: Tensor, like: Tensor) -> Tensor:
    """Per-sample scalars (B,) broadcast against a batch (B, ...), on its device and in its dtype."""
    return c.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def process_input(process: Process, x_tilde: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(t, x_t) for a VE-coordinate input x~ = x0 + sigma * eps: t = t(sigma) and x_t = alpha_t * x~."""
    t = process.t_of_sigma(sigma)
    return t, per_sample(process.alpha(t), x_tilde) * x_tilde


def make_target(target, process, t, x_t, x0, precond=Preconditioning()) -> Tensor:
    """The regression target of `target` for clean data x0 noised to x_t at time t."""
    a, b = target_coefficients(target, process, t, precond)
    return per_sample(a, x_t) * x_t + per_sample(b, x0) * x0


def x0_from_prediction(target, process, t, x_t, pred, precond=Preconditioning()) -> Tensor:
    """Invert the target's affine map: the x0 estimate implied by a prediction of `target`."""
    a, b = target_coefficients(target, process, t, precond)
    return (pred - per_sample(a, x_t) * x_t) / per_sample(b, pred)


def prediction_from_x0(target, process, t, x_t, x0_hat, precond=Preconditioning()) -> Tensor:
    """The prediction of `target` that corresponds to the x0 estimate x0_hat."""
    return make_target(target, process, t, x_t, x0_hat, precond)


def target_error_factor(target, process, t, precond=Preconditioning()) -> Tensor:
    """||pred - target||^2 = factor * ||x0_hat - x0||^2 (the b^2 of the affine map)."""
    return target_coefficients(target, process, t, precond)[1] ** 2


def nelbo_log_sigma_weight(sigma: Tensor) -> Tensor:
    """The continuous-time NELBO's weight on ||x0_hat - x0||^2 per unit of log sigma: 1 / sigma^2.

    The VDM bound int -1/2 SNR'(t) J dt becomes int J / sigma^2 d log sigma with SNR = 1/sigma^2, the
    same for every process (the bound is invariant to the schedule between its end points).
    """
    return _t64(sigma) ** -2


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
            raise ValueError(f"unknown target {self.target!r}; choose from {', '.join(TARGETS)}")
        if isinstance(self.weight, str) and self.weight not in WEIGHTS:
            raise ValueError(f"unknown weight {self.weight!r}; choose from {', '.join(WEIGHTS)}")
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
        if not isinstance(self.weight, str):  # a schedule's weight object (lossfloor.schedules)
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
            raise ValueError(f"not a saved objective (expected format {OBJECTIVE_FORMAT!r})")
        missing = [k for k in ("name", "process", "target", "weight", "time_dist", "precond") if k not in d]
        if missing:
            raise ValueError(f"saved objective {d.get('name')!r} lacks {', '.join(missing)}")
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
        raise ValueError(
            f"unknown objective {name!r}; use one of {', '.join(PRESETS)} or "
            f"<preset>-<target>-<weight> with target in {{{', '.join(TARGETS)}}} "
            f"and weight in {{{', '.join(WEIGHTS)}}}")
    obj = PRESETS[base]()
    if rest:
        obj = obj.with_(name=name, target=rest[0], weight=rest[1])
        if obj.is_discrete and obj.weight == "nelbo":
            raise ValueError(f"{name}: the NELBO weight needs a continuous-time process")
    return obj


def load_objective(saved: Mapping | str) -> Objective:
    """A saved objective: `Objective.to_dict()` output, or (files written before it existed) a name for
    `get_objective`, which gives the named preset's defaults, not any later change to them."""
    return get_objective(saved) if isinstance(saved, str) else Objective.from_dict(saved)
