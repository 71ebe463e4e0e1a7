"""Training schedules: an x0-loss weight lambda(sigma) and a noise density p(log sigma) for an objective.

A schedule changes only how noise levels are drawn and weighted; the objective's process, target and
preconditioning stay.  Both parts are registered components of `lossfloor.objective` (saved as
{"kind": ..., **params}), so a scheduled objective is an ordinary `Objective`:

- weights (`Objective.weight`): `EDMWeight`, `MinSNRWeight`, `SoftMinSNRWeight`, `OptimalLossWeight` (the
  paper's) and `LearnedUncertaintyWeight` (EDM2's, with trainable parameters);
- noise densities (`Objective.time_dist`), defined over log sigma (the objective carries them to its t):
  `LogSigmaNormal` (EDM, EDM2, SD3's logit-normal), `LogSigmaLogistic` (flow matching's uniform t),
  `LogSigmaLaplace` (Hang et al. 2024) and the dynamic `AdaptiveDensity` (the paper's p ~ w (J - J*)).

`apply_schedule(objective, name, curve)` builds the schedules registered in `SCHEDULES`; the trainer calls
`Objective.parameters`, `Objective.loss` (through `Objective.augment`) and `Objective.update` (no-ops for
static schedules).  A dynamic part keeps its state under "state" in `to_dict`, which goes into checkpoints.
`ScheduleSampler` is the same for a user's own training loop.  What is reconstructed, and why each default,
is in docs/theory.md ("Training schedules").
"""

from __future__ import annotations

from collections.abc import Callable

from lossfloor.core.errors import InputError
from lossfloor.core.registry import Registry
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.objective.densities import LogSigmaLaplace, LogSigmaLogistic, LogSigmaNormal, logit_normal
from lossfloor.objective.objective import Objective, get_objective
from lossfloor.objective.weights import EDMWeight, MinSNRWeight, SoftMinSNRWeight
from lossfloor.train.adaptive import AdaptiveDensity, LearnedUncertaintyWeight, OptimalLossWeight

# --------------------------------------------------------------------------------------------
# Named schedules.
# --------------------------------------------------------------------------------------------


def _need_curve(name: str, curve) -> OptimalLossCurve:
    if curve is None:
        raise InputError(f"schedule {name!r} needs an optimal-loss curve (--curve optimal_loss.json)")
    return curve if isinstance(curve, OptimalLossCurve) else OptimalLossCurve.load(curve)


def _optimal_loss(weight: bool, density: bool, bump: bool = True) -> Callable:
    def build(objective: Objective, curve=None, **options) -> Objective:
        curve = _need_curve("optimal-loss", curve)
        density_keys = ("sigma_min", "sigma_max", "bins", "floor", "every", "horizon")
        w = OptimalLossWeight(curve, bump=bump, **{k: v for k, v in options.items() if k not in density_keys})
        out = objective.with_(weight=w) if weight else objective
        if density:
            p = AdaptiveDensity(w, **{k: v for k, v in options.items() if k in density_keys})
            out = out.with_(time_dist=p)
        return out
    return build


SCHEDULES = Registry("schedule")
"""Schedule name -> build(objective, curve=None, **options) (the CLI's --schedule choices).  The optimal-loss
family takes the options of `OptimalLossWeight` and `AdaptiveDensity`; the baselines use their papers'
defaults."""
SCHEDULES.add("native", lambda obj, curve=None: obj, "the objective's own weight and noise distribution")
SCHEDULES.add("optimal-loss", _optimal_loss(weight=True, density=True),
              "the paper's weight a min(1/J*, w*) + bump, adaptive p ~ w (J - J*) (needs --curve)")
SCHEDULES.add("optimal-loss-weight", _optimal_loss(weight=True, density=False),
              "ablation: the paper's weight, the objective's own noise distribution")
SCHEDULES.add("optimal-loss-density", _optimal_loss(weight=False, density=True),
              "ablation: the objective's own weight, the adaptive density")
SCHEDULES.add("optimal-loss-nobump", _optimal_loss(weight=True, density=True, bump=False),
              "ablation: the paper's schedule without the bump left of sigma*")
SCHEDULES.add("edm", lambda obj, curve=None: obj.with_(weight=EDMWeight(),
                                                       time_dist=LogSigmaNormal(-1.2, 1.2)),
              "EDM: lambda = 1/c_out^2, log sigma ~ N(-1.2, 1.2^2)")
SCHEDULES.add("edm2", lambda obj, curve=None: obj.with_(weight=EDMWeight(),
                                                        time_dist=LogSigmaNormal(-0.4, 1.0)),
              "EDM2: lambda = 1/c_out^2, log sigma ~ N(-0.4, 1.0^2)")
SCHEDULES.add("edm2-learned",
              lambda obj, curve=None: obj.with_(weight=LearnedUncertaintyWeight(EDMWeight()),
                                                time_dist=LogSigmaNormal(-0.4, 1.0)),
              "EDM2 with learned uncertainty u(sigma): lambda e^-u loss + u, log sigma ~ N(-0.4, 1)")
SCHEDULES.add("min-snr", lambda obj, curve=None: obj.with_(weight=MinSNRWeight(5.0)),
              "min-SNR-5 weight (Hang et al. 2023), the objective's own noise distribution")
SCHEDULES.add("soft-min-snr",
              lambda obj, curve=None: obj.with_(weight=SoftMinSNRWeight(obj.precond.sigma_data)),
              "k-diffusion soft-min-SNR weight 1/(sigma^2 + sigma_d^2)")
SCHEDULES.add("laplace",
              lambda obj, curve=None: obj.with_(time_dist=LogSigmaLaplace(0.0, 0.5)),
              "Laplace(0, 0.5) on log SNR (Hang et al. 2024), the objective's own weight")
SCHEDULES.add("uniform-t",
              lambda obj, curve=None: obj.with_(time_dist=LogSigmaLogistic(0.0, 1.0)),
              "flow matching's uniform t: log sigma ~ Logistic(0, 1)")
SCHEDULES.add("logit-normal",
              lambda obj, curve=None: obj.with_(time_dist=logit_normal(0.0, 1.0, 1.0)),
              "SD3's logit-normal t (mean 0, std 1, shift 1): log sigma ~ N(0, 1)")


def schedule_names() -> list[str]:
    """The names `apply_schedule` accepts (the CLI's --schedule choices)."""
    return list(SCHEDULES)


def apply_schedule(objective, name: str, curve=None, **options) -> Objective:
    """`objective` (an Objective or a name) trained under schedule `name`; a new Objective named
    "<objective>+<schedule>" (the objective itself for "native")."""
    obj = get_objective(objective) if isinstance(objective, str) else objective
    build = SCHEDULES.require(name)
    if name == "native":
        return obj
    if options and not name.startswith("optimal-loss"):
        raise InputError(f"schedule {name!r} takes no options (got {', '.join(options)})")
    optimal = name.startswith("optimal-loss")
    built = build(obj, curve, **options) if optimal else build(obj)
    return built.with_(name=f"{obj.name}+{name}")
