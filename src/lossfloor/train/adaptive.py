"""Schedules that learn or need J*: the optimal-loss weight, EDM2's learned uncertainty, the adaptive
density; their training hooks (`update`, `augment`, `parameters`) are called through `Objective`."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from lossfloor.core.errors import InputError
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.nets.networks import FourierEmbedding
from lossfloor.objective.components import (
    F64,
    as_f64,
    component_from_dict,
    component_to_dict,
    plain,
    register_component,
)
from lossfloor.objective.densities import LogSigmaDensity
from lossfloor.objective.targets import Preconditioning
from lossfloor.objective.weights import Simple, Weight


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
            raise InputError(f"the bump width must be positive, got {width}")
        self.critical_fraction = float(critical_fraction)
        self.sigma_star = float(sigma_star if sigma_star is not None
                                else self.curve.critical_sigma(critical_fraction))
        if not (self.sigma_star > 0 and math.isfinite(self.sigma_star)):
            raise InputError(f"no critical sigma: J* never exceeds {critical_fraction:g} of the data "
                             "variance on the curve's grid; pass sigma_star or widen the grid")
        self.w_max = float(w_max if w_max is not None else 1.0 / float(self.curve(self.sigma_star)))
        self.a = float(a if a is not None else 1.0 / self.w_max)
        self.width = float(width)
        self.mu = float(mu if mu is not None else math.log(self.sigma_star) - self.width)
        self.bump = bool(bump)
        for name in ("w_max", "a"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise InputError(f"{name} must be positive and finite, got {value}")

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
        ls = torch.log(as_f64(sigma))
        z = (ls - self.mu) / self.width
        f = torch.exp(-0.5 * z**2) / (self.width * math.sqrt(2 * math.pi))
        return torch.where(as_f64(sigma) < self.sigma_star, f, 0.0) * float(self.bump)

    def x0_weight(self, sigma, objective=None):
        s = as_f64(sigma)
        jstar = torch.as_tensor(self.curve(s.detach().cpu().numpy().ravel()), dtype=F64).reshape(s.shape)
        inv = torch.where(jstar > 0, 1.0 / jstar.clamp(min=1e-300), math.inf)
        return self.a * torch.clamp(inv, max=self.w_max) + self.bump_term(s)


class UncertaintyNet(nn.Module):
    """EDM2's u(sigma): Fourier features of c_noise = log(sigma) / 4, then one linear layer (zero-init)."""

    def __init__(self, features: int = 32):
        super().__init__()

        self.fourier = FourierEmbedding(features + 1)
        self.linear = nn.Linear(self.fourier.dim, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, sigma: Tensor) -> Tensor:
        c_noise = Preconditioning().c_noise(as_f64(sigma)).float()
        return self.linear(self.fourier(c_noise)).squeeze(1)


@register_component("learned_uncertainty")
class LearnedUncertaintyWeight(Weight):
    """EDM2's learned per-sigma uncertainty: the loss lambda e^{-u(sigma)} ||x0_hat - x0||^2 + u(sigma).

    `x0_weight` is the base weight (default `Simple()`, the objective's plain MSE); `augment` divides the
    weighted loss by e^u and adds u, whose minimiser over u is the log of the expected weighted loss at
    sigma.  The parameters of u train with the model and are saved under "state".
    """

    def __init__(self, base: Weight | None = None, features: int = 32, state: Mapping | None = None):
        self.base = Simple() if base is None else base
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
        base = component_from_dict(d["base"]) if "base" in d else None
        return cls(base, d.get("features", 32), d.get("state"))

    def __repr__(self) -> str:
        return f"LearnedUncertaintyWeight(base={self.base!r})"

    def x0_weight(self, sigma, objective):
        return self.base.x0_weight(sigma, objective)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def augment(self, sigma: Tensor, loss: Tensor) -> Tensor:
        """loss * e^{-u(sigma)} + u(sigma) per sample (u on loss's device)."""
        u = self.net(sigma).to(loss.device, loss.dtype)
        return loss * torch.exp(-u) + u


EMA_FIELDS = ("ema_count", "ema_count_sq", "ema_sum", "ema_sq")  # the adaptive density's smoothed sums


@register_component("adaptive")
class AdaptiveDensity(LogSigmaDensity):
    """The paper's adaptive density p(log sigma) ~ w(sigma) (J_sigma(theta) - J*_sigma), piecewise constant
    on log-sigma bins, mixed with a uniform floor, recomputed every `every` training steps.

    J_sigma(theta) per bin is an exponentially weighted mean of the model's per-sample x0 losses: at each
    update the running sums decay by 1 - 1/`horizon` before the last `every` steps' losses are added, so a
    loss counts with weight e^{-k/horizon} after k updates and the estimate averages about `horizon` updates'
    samples (`horizon` = 1: only the last `every` steps, the paper's literal reading).  With a batch of B
    spread over 20 bins a bin sees about B * every / 20 samples per update, too few where the gap is a few %
    of J (above sigma ~ 1.6 on the digits); the default horizon of 10 updates cuts the standard error by
    about 3 while the gap it tracks changes over hundreds of steps.  `gap_stderr` is that error per bin.
    A bin that has never seen a sample keeps the start value, the data variance (the loss of predicting the
    mean), so the first density is w (V - J*).  The gap is clipped at 0; `floor` of the mass is spread
    uniformly in log sigma, so every bin keeps support.  w and J* are bin means of the weight and the curve.
    """

    def __init__(self, weight, *, sigma_min: float = 0.002, sigma_max: float = 80.0, bins: int = 20,
                 floor: float = 0.1, every: int = 100, horizon: float = 10.0, state: Mapping | None = None):
        self.weight = component_from_dict(weight) if isinstance(weight, Mapping) else weight
        if not 0 < sigma_min < sigma_max:
            raise InputError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if int(bins) < 1 or int(every) < 1:
            raise InputError(f"bins and every must be at least 1, got {bins}, {every}")
        if not 0 < floor <= 1:
            raise InputError(f"the uniform floor must be in (0, 1], got {floor}")
        if not (horizon >= 1 and math.isfinite(horizon)):
            raise InputError(f"the adaptive density's horizon must be at least 1 update, got {horizon}")
        self.horizon = float(horizon)
        self.sigma_min, self.sigma_max, self.bins = float(sigma_min), float(sigma_max), int(bins)
        self.floor, self.every = float(floor), int(every)
        self.edges = np.linspace(math.log(sigma_min), math.log(sigma_max), self.bins + 1)
        fine = self.edges[:-1, None] + (np.arange(16) + 0.5)[None, :] / 16 * np.diff(self.edges)[:, None]
        self.bin_weight = self.weight.x0_weight(torch.tensor(np.exp(fine)), None).numpy().mean(1)
        self.bin_jstar = self.weight.curve(np.exp(fine).ravel()).reshape(fine.shape).mean(1)
        if state is None:
            self.j_model = np.full(self.bins, float(self.weight.curve.data_variance))
            self.count, self.sum = np.zeros(self.bins, dtype=np.int64), np.zeros(self.bins)
            self.sum_sq = np.zeros(self.bins)
            for name in EMA_FIELDS:
                setattr(self, name, np.zeros(self.bins))
            self.steps, self.updates = 0, 0
            self.probs = self.target(self.j_model)
            self.history = [self.probs.tolist()]
        else:
            self.load_state_dict(state)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return dict(j_model=self.j_model.tolist(), count=self.count.tolist(), sum=self.sum.tolist(),
                    sum_sq=self.sum_sq.tolist(), **{k: getattr(self, k).tolist() for k in EMA_FIELDS},
                    steps=self.steps, updates=self.updates, probs=self.probs.tolist(),
                    history=[list(h) for h in self.history])

    def load_state_dict(self, state: Mapping) -> None:
        self.j_model = np.asarray(state["j_model"], dtype=float)
        self.count = np.asarray(state["count"], dtype=np.int64)
        self.sum = np.asarray(state["sum"], dtype=float)
        zeros = [0.0] * self.bins  # states saved before the smoothing (horizon 1): nothing carried over
        self.sum_sq = np.asarray(state.get("sum_sq", zeros), dtype=float)
        for name in EMA_FIELDS:
            setattr(self, name, np.asarray(state.get(name, zeros), dtype=float))
        self.steps, self.updates = int(state["steps"]), int(state["updates"])
        self.probs = np.asarray(state["probs"], dtype=float)
        self.history = [list(h) for h in state.get("history", [self.probs.tolist()])]
        if any(len(a) != self.bins for a in (self.j_model, self.count, self.sum, self.probs, self.sum_sq,
                                             self.ema_count, self.ema_count_sq, self.ema_sum, self.ema_sq)):
            raise InputError(f"adaptive density state has the wrong number of bins (expected {self.bins})")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "weight": component_to_dict(self.weight), "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max, "bins": self.bins, "floor": self.floor, "every": self.every,
                "horizon": self.horizon, "state": self.state_dict()}

    @classmethod
    def from_dict(cls, d: Mapping) -> AdaptiveDensity:
        """From `to_dict`; a dict without "horizon" was saved before the smoothing and keeps horizon 1."""
        return cls(**{"horizon": 1.0, **{k: v for k, v in d.items() if k != "kind"}})

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
        self.sum_sq += np.bincount(idx[inside], loss[inside] ** 2, minlength=self.bins)
        self.steps += 1
        if self.steps % self.every == 0:
            keep = 1.0 - 1.0 / self.horizon
            self.ema_count = keep * self.ema_count + self.count
            self.ema_count_sq = keep**2 * self.ema_count_sq + self.count  # each new loss enters with weight 1
            self.ema_sum = keep * self.ema_sum + self.sum
            self.ema_sq = keep * self.ema_sq + self.sum_sq
            seen = self.ema_count > 0
            self.j_model = np.where(seen, self.ema_sum / np.where(seen, self.ema_count, 1), self.j_model)
            self.probs = self.target(self.j_model)
            self.history.append(self.probs.tolist())
            self.count[:] = 0
            self.sum[:] = 0.0
            self.sum_sq[:] = 0.0
            self.updates += 1

    def gap_stderr(self) -> np.ndarray:
        """Standard error of each bin's smoothed J (nan under 2 effective samples): for independent losses
        with weights w (e^{-k/horizon}-like, k updates back) Var(sum w x / sum w) = s^2 sum w^2 / (sum w)^2,
        so the weighted sample standard deviation (unbiased for these reliability weights) over the square
        root of the effective sample size n_eff = (sum w)^2 / sum w^2, which tends to m (2 horizon - 1) for
        m samples per update."""
        n, n2 = self.ema_count, self.ema_count_sq
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.ema_sum / n
            n_eff = n**2 / n2
            var = np.clip(self.ema_sq / n - mean**2, 0, None) * n_eff / (n_eff - 1)  # unbiased
        return np.where(n_eff >= 2, np.sqrt(var / n_eff), np.nan)

    def sample_log_sigma(self, n, generator=None):
        u = torch.rand(n, generator=generator, dtype=F64).numpy()
        cum = np.concatenate([[0.0], np.cumsum(self.probs)])
        cum /= cum[-1]
        b = np.clip(np.searchsorted(cum, u, side="right") - 1, 0, self.bins - 1)
        frac = (u - cum[b]) / np.maximum(self.probs[b] / self.probs.sum(), 1e-300)
        return torch.from_numpy(self.edges[b] + np.clip(frac, 0, 1) * np.diff(self.edges)[b])

    def cdf_log_sigma(self, log_sigma):
        ls = np.asarray(as_f64(log_sigma), dtype=float)
        cum = np.concatenate([[0.0], np.cumsum(self.probs)]) / self.probs.sum()
        return torch.from_numpy(np.asarray(np.interp(ls, self.edges, cum), dtype=float))

    def log_density_log_sigma(self, log_sigma):
        ls = np.asarray(as_f64(log_sigma).detach(), dtype=float)
        b = np.searchsorted(self.edges, ls, side="right") - 1
        inside = (b >= 0) & (b < self.bins) | (ls == self.edges[-1])
        b = np.clip(b, 0, self.bins - 1)
        dens = self.probs[b] / self.probs.sum() / np.diff(self.edges)[b]
        with np.errstate(divide="ignore"):
            return torch.from_numpy(np.asarray(np.where(inside, np.log(dens), -np.inf), dtype=float))
