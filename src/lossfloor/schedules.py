"""Training schedules: an x0-loss weight lambda(sigma) and a noise density p(log sigma) for an objective.

A schedule changes only how noise levels are drawn and weighted; the objective's process, target and
preconditioning stay.  Both parts are registered components of `lossfloor.formulation` (saved as
{"kind": ..., **params}), so a scheduled objective is an ordinary `Objective`:

- weights (`Objective.weight`): `EDMWeight`, `MinSNRWeight`, `SoftMinSNRWeight`, `OptimalLossWeight` (the
  paper's) and `LearnedUncertaintyWeight` (EDM2's, with trainable parameters);
- noise densities (`Objective.time_dist`), defined over log sigma and carried to the process's t:
  `LogSigmaNormal` (EDM, EDM2, SD3's logit-normal), `LogSigmaLogistic` (flow matching's uniform t),
  `LogSigmaLaplace` (Hang et al. 2024) and the dynamic `AdaptiveDensity` (the paper's p ~ w (J - J*)).

`apply_schedule(objective, name, curve)` builds the named schedules of `SCHEDULES`; the trainer calls
`trainable_parameters`, `augment_loss` and `update` (no-ops for static schedules).  A dynamic part keeps its
state under "state" in `to_dict`, which goes into checkpoints.  `ScheduleSampler` is the same for a user's
own training loop.  What is reconstructed, and why each default, is in docs/theory.md ("Training schedules").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .curve import OptimalLossCurve
from .formulation import (
    F64,
    Component,
    Objective,
    Preconditioning,
    Process,
    TimeDistribution,
    _t64,
    component_from_dict,
    component_to_dict,
    get_objective,
    plain,
    register_component,
)
from .models import x0_loss_from_target

Tensor = torch.Tensor


def _positive(**values) -> None:
    for name, value in values.items():
        if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")


# --------------------------------------------------------------------------------------------
# Loss weights lambda(sigma) on ||x0_hat - x0||^2 (VE sigma; per dimension, like J*).
# --------------------------------------------------------------------------------------------


class Weight(Component):
    """An x0-space loss weight; `objective` supplies the process and target where a weight needs them."""

    def x0_weight(self, sigma: Tensor, objective: Objective) -> Tensor:
        raise NotImplementedError


@register_component("edm_weight")
@dataclass(frozen=True)
class EDMWeight(Weight):
    """Karras et al. 2022: lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2."""

    sigma_data: float = 0.5

    def x0_weight(self, sigma, objective=None):
        return Preconditioning(self.sigma_data).c_out(_t64(sigma)) ** -2


@register_component("min_snr")
@dataclass(frozen=True)
class MinSNRWeight(Weight):
    """Hang et al. 2023 min-SNR-gamma: lambda = min(SNR, gamma), SNR = 1 / sigma^2.

    Its epsilon form min(SNR, gamma) / SNR and its v form min(SNR, gamma) / (SNR + 1) (on the eps and v
    losses of a VP process) are the same x0 weight; `target_weight` gives either.
    """

    gamma: float = 5.0

    def __post_init__(self):
        _positive(gamma=self.gamma)

    def x0_weight(self, sigma, objective=None):
        return torch.clamp(_t64(sigma) ** -2, max=self.gamma)


@register_component("soft_min_snr")
@dataclass(frozen=True)
class SoftMinSNRWeight(Weight):
    """k-diffusion's soft-min-SNR: (sigma sigma_d)^2 / (sigma^2 + sigma_d^2)^2 on the F loss, i.e.
    lambda = 1 / (sigma^2 + sigma_d^2), a harmonic soft minimum of SNR and 1 / sigma_d^2."""

    sigma_data: float = 0.5

    def x0_weight(self, sigma, objective=None):
        return 1.0 / (_t64(sigma) ** 2 + self.sigma_data**2)


@register_component("optimal_loss")
class OptimalLossWeight(Weight):
    """The paper's weight w = a min(1/J*(sigma), w_max) + N(log sigma; mu, width^2) 1[sigma < sigma*].

    J* is the per-dimension optimal x0 loss of the training data.  Reconstructed defaults (docs/theory.md):
    sigma* = `curve.critical_sigma(critical_fraction)` (the smallest grid sigma where J* exceeds that
    fraction of the data variance), w_max = 1/J*(sigma*) (the first term is flat left of sigma*),
    a = 1/w_max (the first term peaks at 1, commensurate with the unit-mass bump), mu = log sigma* - width.
    """

    def __init__(self, curve, *, a: float | None = None, w_max: float | None = None,
                 sigma_star: float | None = None, mu: float | None = None, width: float = 0.5,
                 bump: bool = True, critical_fraction: float = 0.01):
        self.curve = curve if isinstance(curve, OptimalLossCurve) else OptimalLossCurve.from_dict(curve)
        if not width > 0:
            raise ValueError(f"the bump width must be positive, got {width}")
        self.critical_fraction = float(critical_fraction)
        self.sigma_star = float(sigma_star if sigma_star is not None
                                else self.curve.critical_sigma(critical_fraction))
        if not (self.sigma_star > 0 and math.isfinite(self.sigma_star)):
            raise ValueError(f"no critical sigma: J* never exceeds {critical_fraction:g} of the data "
                             "variance on the curve's grid; pass sigma_star or widen the grid")
        self.w_max = float(w_max if w_max is not None else 1.0 / float(self.curve(self.sigma_star)))
        self.a = float(a if a is not None else 1.0 / self.w_max)
        self.width = float(width)
        self.mu = float(mu if mu is not None else math.log(self.sigma_star) - self.width)
        self.bump = bool(bump)
        for name in ("w_max", "a"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be positive and finite, got {value}")

    def __repr__(self) -> str:
        return (f"OptimalLossWeight(sigma*={self.sigma_star:.3g}, w*={self.w_max:.3g}, a={self.a:.3g}, "
                f"mu={self.mu:.3g}, width={self.width:g}, bump={self.bump})")

    def params(self) -> dict:
        return dict(a=self.a, w_max=self.w_max, sigma_star=self.sigma_star, mu=self.mu, width=self.width,
                    bump=self.bump, critical_fraction=self.critical_fraction)

    def to_dict(self) -> dict:
        curve = {k: v for k, v in self.curve.to_dict().items() if k != "critical_sigma"}
        return {"kind": self.kind, "curve": plain(curve), **self.params()}

    @classmethod
    def from_dict(cls, d: Mapping) -> OptimalLossWeight:
        return cls(**{k: v for k, v in d.items() if k != "kind"})

    def bump_term(self, sigma) -> Tensor:
        """N(log sigma; mu, width^2) where sigma < sigma*, else 0 (0 everywhere without the bump)."""
        ls = torch.log(_t64(sigma))
        z = (ls - self.mu) / self.width
        f = torch.exp(-0.5 * z**2) / (self.width * math.sqrt(2 * math.pi))
        return torch.where(_t64(sigma) < self.sigma_star, f, 0.0) * float(self.bump)

    def x0_weight(self, sigma, objective=None):
        s = _t64(sigma)
        jstar = torch.as_tensor(self.curve(s.detach().cpu().numpy().ravel()), dtype=F64).reshape(s.shape)
        inv = torch.where(jstar > 0, 1.0 / jstar.clamp(min=1e-300), math.inf)
        return self.a * torch.clamp(inv, max=self.w_max) + self.bump_term(s)


class UncertaintyNet(nn.Module):
    """EDM2's u(sigma): Fourier features of c_noise = log(sigma) / 4, then one linear layer (zero-init)."""

    def __init__(self, features: int = 32):
        super().__init__()
        from .models import FourierEmbedding

        self.fourier = FourierEmbedding(features + 1)
        self.linear = nn.Linear(self.fourier.dim, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, sigma: Tensor) -> Tensor:
        c_noise = Preconditioning().c_noise(_t64(sigma)).float()
        return self.linear(self.fourier(c_noise)).squeeze(1)


@register_component("learned_uncertainty")
class LearnedUncertaintyWeight(Weight):
    """EDM2's learned per-sigma uncertainty: the loss lambda e^{-u(sigma)} ||x0_hat - x0||^2 + u(sigma).

    `x0_weight` is the base weight (default the objective's own, "simple"); `augment` divides the weighted
    loss by e^u and adds u, whose minimiser over u is the log of the expected weighted loss at sigma.  The
    parameters of u train with the model and are saved under "state".
    """

    def __init__(self, base="simple", features: int = 32, state: Mapping | None = None):
        self.base = component_from_dict(base) if isinstance(base, Mapping) else base
        self.features = int(features)
        self.net = UncertaintyNet(self.features)
        if state is not None:
            self.net.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in state.items()
                                      if k in dict(self.net.named_parameters())}, strict=False)

    def to_dict(self) -> dict:
        state = {k: v.detach().cpu().double().tolist() for k, v in self.net.named_parameters()}
        return {"kind": self.kind, "base": component_to_dict(self.base), "features": self.features,
                "state": state}

    @classmethod
    def from_dict(cls, d: Mapping) -> LearnedUncertaintyWeight:
        return cls(d.get("base", "simple"), d.get("features", 32), d.get("state"))

    def __repr__(self) -> str:
        return f"LearnedUncertaintyWeight(base={self.base!r})"

    def x0_weight(self, sigma, objective):
        return objective.with_(weight=self.base).x0_weight(sigma)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def augment(self, sigma: Tensor, loss: Tensor) -> Tensor:
        """loss * e^{-u(sigma)} + u(sigma) per sample (u on loss's device)."""
        u = self.net(sigma).to(loss.device, loss.dtype)
        return loss * torch.exp(-u) + u


# --------------------------------------------------------------------------------------------
# Noise densities over log sigma, carried to the objective's process time t.
# --------------------------------------------------------------------------------------------


class LogSigmaDensity(TimeDistribution):
    """A density of log sigma (VE sigma); `sample`, `cdf`, `log_density` act on the process's t."""

    process: Process

    def sample_log_sigma(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def cdf_log_sigma(self, log_sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def log_density_log_sigma(self, log_sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n, generator=None):
        return self.process.t_of_sigma(torch.exp(self.sample_log_sigma(n, generator)))

    def cdf(self, t):
        return self.cdf_log_sigma(torch.log(self.process.ve_sigma(t)))

    def log_density(self, t):
        """Density in t: p(log sigma) |d log sigma / dt|."""
        t = _t64(t).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            ls = torch.log(self.process.ve_sigma(t))
            dls, = torch.autograd.grad(ls.sum(), t)
        return self.log_density_log_sigma(ls.detach()) + torch.log(dls.abs())

    @classmethod
    def from_dict(cls, d: Mapping):
        return cls(**{k: (component_from_dict(v) if k == "process" else v)
                      for k, v in d.items() if k != "kind"})


@register_component("log_sigma_normal")
@dataclass(frozen=True)
class LogSigmaNormal(LogSigmaDensity):
    """log sigma ~ N(mean, std^2): EDM (-1.2, 1.2), EDM2 (-0.4, 1.0); for flow matching SD3's logit-normal."""

    process: Process
    mean: float = -1.2
    std: float = 1.2

    def __post_init__(self):
        _positive(std=self.std)

    def sample_log_sigma(self, n, generator=None):
        return self.mean + self.std * torch.randn(n, generator=generator, dtype=F64)

    def cdf_log_sigma(self, log_sigma):
        return 0.5 * torch.erfc(-(_t64(log_sigma) - self.mean) / (self.std * math.sqrt(2)))

    def log_density_log_sigma(self, log_sigma):
        z = (_t64(log_sigma) - self.mean) / self.std
        return -0.5 * z**2 - math.log(self.std * math.sqrt(2 * math.pi))


def logit_normal(process: Process, mean: float = 0.0, std: float = 1.0, shift: float = 1.0) -> LogSigmaNormal:
    """SD3: t = sigmoid(u), u ~ N(mean, std^2), then t' = shift t / (1 + (shift - 1) t).

    For flow matching log sigma = logit(t) and logit(t') = logit(t) + log(shift), so this is log sigma ~
    N(mean + log shift, std^2).
    """
    return LogSigmaNormal(process, mean + math.log(shift), std)


@register_component("log_sigma_logistic")
@dataclass(frozen=True)
class LogSigmaLogistic(LogSigmaDensity):
    """log sigma ~ Logistic(loc, scale); (0, 1) is flow matching's uniform t (sigma = t / (1 - t))."""

    process: Process
    loc: float = 0.0
    scale: float = 1.0

    def __post_init__(self):
        _positive(scale=self.scale)

    def sample_log_sigma(self, n, generator=None):
        u = torch.rand(n, generator=generator, dtype=F64).clamp(1e-12, 1 - 1e-12)
        return self.loc + self.scale * torch.logit(u)

    def cdf_log_sigma(self, log_sigma):
        return torch.sigmoid((_t64(log_sigma) - self.loc) / self.scale)

    def log_density_log_sigma(self, log_sigma):
        z = (_t64(log_sigma) - self.loc) / self.scale
        return -torch.nn.functional.softplus(-z) - torch.nn.functional.softplus(z) - math.log(self.scale)


@register_component("log_snr_laplace")
@dataclass(frozen=True)
class LogSigmaLaplace(LogSigmaDensity):
    """Hang et al. 2024: log SNR ~ Laplace(mu, b), i.e. log sigma = -log SNR / 2 ~ Laplace(-mu/2, b/2)."""

    process: Process
    mu: float = 0.0
    b: float = 0.5

    def __post_init__(self):
        _positive(b=self.b)

    def sample_log_sigma(self, n, generator=None):
        u = torch.rand(n, generator=generator, dtype=F64).clamp(1e-12, 1 - 1e-12) - 0.5
        return -self.mu / 2 - (self.b / 2) * torch.sign(u) * torch.log1p(-2 * u.abs())

    def cdf_log_sigma(self, log_sigma):
        z = (_t64(log_sigma) + self.mu / 2) / (self.b / 2)
        return torch.where(z < 0, 0.5 * torch.exp(z.clamp(max=0)), 1 - 0.5 * torch.exp(-z.clamp(min=0)))

    def log_density_log_sigma(self, log_sigma):
        return -(_t64(log_sigma) + self.mu / 2).abs() / (self.b / 2) - math.log(self.b)


@register_component("adaptive")
class AdaptiveDensity(LogSigmaDensity):
    """The paper's adaptive density p(log sigma) ~ w(sigma) (J_sigma(theta) - J*_sigma), piecewise constant
    on log-sigma bins, mixed with a uniform floor, recomputed every `every` training steps.

    J_sigma(theta) per bin is the model's mean x0 loss over the last `every` steps (bins that saw no sample
    keep their previous value); it starts at the data variance (the loss of predicting the mean), so the
    first density is w (V - J*).  The gap is clipped at 0; `floor` of the mass is spread uniformly in log
    sigma, so every bin keeps support.  w and J* are bin means of the weight and of the curve.
    """

    def __init__(self, process, weight, *, sigma_min: float = 0.002, sigma_max: float = 80.0, bins: int = 20,
                 floor: float = 0.1, every: int = 100, state: Mapping | None = None):
        self.process = component_from_dict(process) if isinstance(process, Mapping) else process
        self.weight = component_from_dict(weight) if isinstance(weight, Mapping) else weight
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if int(bins) < 1 or int(every) < 1:
            raise ValueError(f"bins and every must be at least 1, got {bins}, {every}")
        if not 0 < floor <= 1:
            raise ValueError(f"the uniform floor must be in (0, 1], got {floor}")
        self.sigma_min, self.sigma_max, self.bins = float(sigma_min), float(sigma_max), int(bins)
        self.floor, self.every = float(floor), int(every)
        self.edges = np.linspace(math.log(sigma_min), math.log(sigma_max), self.bins + 1)
        fine = self.edges[:-1, None] + (np.arange(16) + 0.5)[None, :] / 16 * np.diff(self.edges)[:, None]
        self.bin_weight = self.weight.x0_weight(torch.tensor(np.exp(fine)), None).numpy().mean(1)
        self.bin_jstar = self.weight.curve(np.exp(fine).ravel()).reshape(fine.shape).mean(1)
        if state is None:
            self.j_model = np.full(self.bins, float(self.weight.curve.data_variance))
            self.count, self.sum = np.zeros(self.bins, dtype=np.int64), np.zeros(self.bins)
            self.steps, self.updates = 0, 0
            self.probs = self.target(self.j_model)
            self.history = [self.probs.tolist()]
        else:
            self.load_state_dict(state)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return dict(j_model=self.j_model.tolist(), count=self.count.tolist(), sum=self.sum.tolist(),
                    steps=self.steps, updates=self.updates, probs=self.probs.tolist(),
                    history=[list(h) for h in self.history])

    def load_state_dict(self, state: Mapping) -> None:
        self.j_model = np.asarray(state["j_model"], dtype=float)
        self.count = np.asarray(state["count"], dtype=np.int64)
        self.sum = np.asarray(state["sum"], dtype=float)
        self.steps, self.updates = int(state["steps"]), int(state["updates"])
        self.probs = np.asarray(state["probs"], dtype=float)
        self.history = [list(h) for h in state.get("history", [self.probs.tolist()])]
        if any(len(a) != self.bins for a in (self.j_model, self.count, self.sum, self.probs)):
            raise ValueError(f"adaptive density state has the wrong number of bins (expected {self.bins})")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "process": component_to_dict(self.process),
                "weight": component_to_dict(self.weight), "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max, "bins": self.bins, "floor": self.floor, "every": self.every,
                "state": self.state_dict()}

    @classmethod
    def from_dict(cls, d: Mapping) -> AdaptiveDensity:
        return cls(**{k: v for k, v in d.items() if k != "kind"})

    # -- the density -------------------------------------------------------------------------
    def target(self, j_model: np.ndarray) -> np.ndarray:
        """Bin masses (1 - floor) w (J - J*)_+ / sum + floor * uniform in log sigma."""
        widths = np.diff(self.edges)
        q = self.bin_weight * np.clip(np.asarray(j_model) - self.bin_jstar, 0, None) * widths
        uniform = widths / widths.sum()
        if not q.sum() > 0 or not np.isfinite(q.sum()):
            return uniform
        return (1 - self.floor) * q / q.sum() + self.floor * uniform

    def update(self, sigma, x0_loss) -> None:
        """Add per-sample x0 losses at VE sigma; every `every` calls, re-estimate J per bin and p."""
        ls = np.log(np.asarray(torch.as_tensor(sigma).detach().cpu(), dtype=float).ravel())
        loss = np.asarray(torch.as_tensor(x0_loss).detach().cpu(), dtype=float).ravel()
        idx = np.searchsorted(self.edges, ls, side="right") - 1
        inside = (idx >= 0) & (idx < self.bins)
        self.count += np.bincount(idx[inside], minlength=self.bins)
        self.sum += np.bincount(idx[inside], loss[inside], minlength=self.bins)
        self.steps += 1
        if self.steps % self.every == 0:
            seen = self.count > 0
            self.j_model = np.where(seen, self.sum / np.maximum(self.count, 1), self.j_model)
            self.probs = self.target(self.j_model)
            self.history.append(self.probs.tolist())
            self.count[:] = 0
            self.sum[:] = 0.0
            self.updates += 1

    def sample_log_sigma(self, n, generator=None):
        u = torch.rand(n, generator=generator, dtype=F64).numpy()
        cum = np.concatenate([[0.0], np.cumsum(self.probs)])
        cum /= cum[-1]
        b = np.clip(np.searchsorted(cum, u, side="right") - 1, 0, self.bins - 1)
        frac = (u - cum[b]) / np.maximum(self.probs[b] / self.probs.sum(), 1e-300)
        return torch.from_numpy(self.edges[b] + np.clip(frac, 0, 1) * np.diff(self.edges)[b])

    def cdf_log_sigma(self, log_sigma):
        ls = np.asarray(_t64(log_sigma), dtype=float)
        cum = np.concatenate([[0.0], np.cumsum(self.probs)]) / self.probs.sum()
        return torch.from_numpy(np.asarray(np.interp(ls, self.edges, cum), dtype=float))

    def log_density_log_sigma(self, log_sigma):
        ls = np.asarray(_t64(log_sigma).detach(), dtype=float)
        b = np.searchsorted(self.edges, ls, side="right") - 1
        inside = (b >= 0) & (b < self.bins) | (ls == self.edges[-1])
        b = np.clip(b, 0, self.bins - 1)
        dens = self.probs[b] / self.probs.sum() / np.diff(self.edges)[b]
        with np.errstate(divide="ignore"):
            return torch.from_numpy(np.asarray(np.where(inside, np.log(dens), -np.inf), dtype=float))


# --------------------------------------------------------------------------------------------
# Trainer hooks (no-ops for static schedules).
# --------------------------------------------------------------------------------------------


def _parts(objective: Objective) -> tuple:
    return (objective.weight, objective.time_dist)


def is_dynamic(objective: Objective) -> bool:
    """True when the objective has state that training changes (an adaptive density, a learned weight)."""
    return any(hasattr(p, "update") or hasattr(p, "augment") for p in _parts(objective))


def trainable_parameters(objective: Objective) -> list[nn.Parameter]:
    """Parameters the schedule trains alongside the model (EDM2's u(sigma)); [] for most schedules."""
    return [p for part in _parts(objective) if hasattr(part, "parameters") for p in part.parameters()]


def augment_loss(objective: Objective, sigma: Tensor, loss: Tensor) -> Tensor:
    """The per-sample training loss from the weighted loss (EDM2: loss e^{-u} + u; else unchanged)."""
    for part in _parts(objective):
        if hasattr(part, "augment"):
            loss = part.augment(sigma, loss)
    return loss


def update(objective: Objective, sigma: Tensor, x0_loss: Tensor) -> None:
    """Feed per-sample x0 losses at VE sigma to the dynamic parts (after each optimisation step)."""
    for part in _parts(objective):
        if hasattr(part, "update"):
            part.update(sigma, x0_loss)


# --------------------------------------------------------------------------------------------
# Named schedules.
# --------------------------------------------------------------------------------------------


def _need_curve(name: str, curve) -> OptimalLossCurve:
    if curve is None:
        raise ValueError(f"schedule {name!r} needs an optimal-loss curve (--curve optimal_loss.json)")
    return curve if isinstance(curve, OptimalLossCurve) else OptimalLossCurve.load(curve)


def _optimal_loss(weight: bool, density: bool, bump: bool = True) -> Callable:
    def build(objective: Objective, curve=None, **options) -> Objective:
        curve = _need_curve("optimal-loss", curve)
        density_keys = ("sigma_min", "sigma_max", "bins", "floor", "every")
        w = OptimalLossWeight(curve, bump=bump, **{k: v for k, v in options.items() if k not in density_keys})
        out = objective.with_(weight=w) if weight else objective
        if density:
            p = AdaptiveDensity(objective.process, w,
                                **{k: v for k, v in options.items() if k in density_keys})
            out = out.with_(time_dist=p)
        return out
    return build


SCHEDULES: dict[str, Callable[..., Objective]] = {
    "native": lambda obj, curve=None: obj,
    "optimal-loss": _optimal_loss(weight=True, density=True),
    "optimal-loss-weight": _optimal_loss(weight=True, density=False),
    "optimal-loss-density": _optimal_loss(weight=False, density=True),
    "optimal-loss-nobump": _optimal_loss(weight=True, density=True, bump=False),
    "edm": lambda obj, curve=None: obj.with_(weight=EDMWeight(),
                                             time_dist=LogSigmaNormal(obj.process, -1.2, 1.2)),
    "edm2": lambda obj, curve=None: obj.with_(weight=EDMWeight(),
                                              time_dist=LogSigmaNormal(obj.process, -0.4, 1.0)),
    "edm2-learned": lambda obj, curve=None: obj.with_(weight=LearnedUncertaintyWeight(EDMWeight()),
                                                      time_dist=LogSigmaNormal(obj.process, -0.4, 1.0)),
    "min-snr": lambda obj, curve=None: obj.with_(weight=MinSNRWeight(5.0)),
    "soft-min-snr": lambda obj, curve=None: obj.with_(weight=SoftMinSNRWeight(obj.precond.sigma_data)),
    "laplace": lambda obj, curve=None: obj.with_(time_dist=LogSigmaLaplace(obj.process, 0.0, 0.5)),
    "uniform-t": lambda obj, curve=None: obj.with_(time_dist=LogSigmaLogistic(obj.process, 0.0, 1.0)),
    "logit-normal": lambda obj, curve=None: obj.with_(time_dist=logit_normal(obj.process, 0.0, 1.0, 1.0)),
}
"""Schedule name -> build(objective, curve=None, **options).  The optimal-loss family takes the options of
`OptimalLossWeight` and `AdaptiveDensity`; the baselines use their papers' defaults."""

DESCRIPTIONS = {
    "native": "the objective's own weight and noise distribution",
    "optimal-loss": "the paper's weight a min(1/J*, w*) + bump, adaptive p ~ w (J - J*) (needs --curve)",
    "optimal-loss-weight": "ablation: the paper's weight, the objective's own noise distribution",
    "optimal-loss-density": "ablation: the objective's own weight, the adaptive density",
    "optimal-loss-nobump": "ablation: the paper's schedule without the bump left of sigma*",
    "edm": "EDM: lambda = 1/c_out^2, log sigma ~ N(-1.2, 1.2^2)",
    "edm2": "EDM2: lambda = 1/c_out^2, log sigma ~ N(-0.4, 1.0^2)",
    "edm2-learned": "EDM2 with learned uncertainty u(sigma): lambda e^-u loss + u, log sigma ~ N(-0.4, 1)",
    "min-snr": "min-SNR-5 weight (Hang et al. 2023), the objective's own noise distribution",
    "soft-min-snr": "k-diffusion soft-min-SNR weight 1/(sigma^2 + sigma_d^2)",
    "laplace": "Laplace(0, 0.5) on log SNR (Hang et al. 2024), the objective's own weight",
    "uniform-t": "flow matching's uniform t: log sigma ~ Logistic(0, 1)",
    "logit-normal": "SD3's logit-normal t (mean 0, std 1, shift 1): log sigma ~ N(0, 1)",
}


def schedule_names() -> list[str]:
    """The names `apply_schedule` accepts (the CLI's --schedule choices)."""
    return list(SCHEDULES)


def apply_schedule(objective, name: str, curve=None, **options) -> Objective:
    """`objective` (an Objective or a name) trained under schedule `name`; a new Objective named
    "<objective>+<schedule>" (the objective itself for "native")."""
    obj = get_objective(objective) if isinstance(objective, str) else objective
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    if name == "native":
        return obj
    if options and not name.startswith("optimal-loss"):
        raise ValueError(f"schedule {name!r} takes no options (got {', '.join(options)})")
    optimal = name.startswith("optimal-loss")
    built = SCHEDULES[name](obj, curve, **options) if optimal else SCHEDULES[name](obj)
    return built.with_(name=f"{obj.name}+{name}")


# --------------------------------------------------------------------------------------------
# For a user's own training loop.
# --------------------------------------------------------------------------------------------


class ScheduleSampler:
    """A schedule for your own loop: draw sigma, weigh your target-space loss, feed back x0 losses.

    `objective` names your process and target (e.g. "flow" = rectified flow, velocity; "vp-eps-simple";
    or an `Objective`); `target` overrides the target space you compute your loss in.  Per step:
    ``sigma = s.sample_sigma(B)``, ``t = s.t(sigma)``, noise your data at t, compute the per-sample mean
    squared error on your target, ``loss = s.loss(sigma, mse).mean()``, and ``s.update(sigma, s.x0_loss(sigma,
    mse))``.  Add ``s.parameters()`` to your optimizer (EDM2's learned weighting has some); save
    ``s.state_dict()`` with your checkpoint.
    """

    def __init__(self, objective, schedule: str = "native", *, curve=None, target: str | None = None,
                 seed: int = 0, **options):
        base = get_objective(objective) if isinstance(objective, str) else objective
        if target is not None:
            base = base.with_(target=target)
        self.objective = apply_schedule(base, schedule, curve, **options)
        self.generator = torch.Generator().manual_seed(seed)

    def sample_sigma(self, n: int) -> Tensor:
        """n VE noise levels sigma = sigma_t / alpha_t (float64)."""
        return self.objective.sample_sigma(n, self.generator)

    def t(self, sigma: Tensor) -> Tensor:
        """The process time of each VE sigma."""
        return self.objective.process.t_of_sigma(sigma)

    def weight(self, sigma: Tensor) -> Tensor:
        """Per-sample weight on the squared error of your target (lambda(sigma) / the target's x0 factor)."""
        return self.objective.target_weight(self.t(sigma))

    def x0_loss(self, sigma: Tensor, target_mse: Tensor) -> Tensor:
        """Your target-space per-sample error converted to ||x0_hat - x0||^2 / D."""
        return x0_loss_from_target(self.objective, self.t(sigma), target_mse.detach()).cpu()

    def loss(self, sigma: Tensor, target_mse: Tensor) -> Tensor:
        """Per-sample training loss: weight * target_mse (and EDM2's e^-u, + u, when learned)."""
        w = self.weight(sigma).to(target_mse.device, target_mse.dtype)
        return augment_loss(self.objective, sigma, w * target_mse)

    def update(self, sigma: Tensor, x0_loss: Tensor) -> None:
        """Feed the step's x0 losses to an adaptive schedule (no-op for static ones)."""
        update(self.objective, sigma, x0_loss)

    def parameters(self) -> list[nn.Parameter]:
        return trainable_parameters(self.objective)

    def state_dict(self) -> dict:
        return dict(objective=self.objective.to_dict(), generator=self.generator.get_state())

    def load_state_dict(self, state: Mapping) -> None:
        self.objective = Objective.from_dict(state["objective"])
        self.generator.set_state(state["generator"])
