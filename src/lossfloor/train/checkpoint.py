"""Checkpoints: `Checkpoint` (the run's description and state dicts) and its safe loading."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lossfloor.core.errors import InputError, reason
from lossfloor.core.schema import check_checkpoint_dict, check_weights, safe_torch_load
from lossfloor.nets.denoiser import Denoiser
from lossfloor.nets.networks import ModelConfig, build_model
from lossfloor.objective.objective import Objective

CHECKPOINT_FORMAT = "lossfloor-checkpoint-1"
CHECKPOINT_NAME = "checkpoint.pt"


# --------------------------------------------------------------------------------------------
# Checkpoints.
# --------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A loaded checkpoint: the run's description plus its state dicts.

    `objective` is the saved `Objective.to_dict()` rebuilt (an old checkpoint's bare name: the preset).
    """

    path: Path
    step: int
    objective_name: str
    model: ModelConfig
    data: dict
    train: dict
    state: dict
    objective: Objective

    def denoiser(self, ema: bool = True, device="cpu") -> Denoiser:
        """The trained x0-denoiser (EMA weights by default), in eval mode."""
        net = build_model(self.model)
        net.load_state_dict(self.state["ema" if ema else "net"])
        return Denoiser(net, self.objective).to(device).eval()


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint; a missing file raises FileNotFoundError, a damaged one ValueError."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = safe_torch_load(path)  # weights_only=True, always; one line naming the file otherwise
    check_checkpoint_dict(state, str(path), CHECKPOINT_FORMAT)
    try:
        model = ModelConfig(**state["model"])
        reference = build_model(model).state_dict()
    except (TypeError, KeyError, ValueError, RuntimeError) as err:
        raise InputError(f"{path}: field 'model': not a usable model description ({reason(err)})") from None
    for field in ("net", "ema"):
        check_weights(state[field], reference, str(path), field)
    if isinstance(state["objective"], str):
        raise InputError(f"{path}: field 'objective': only the name {state['objective']!r} is stored (a "
                         "checkpoint written before lossfloor saved objectives in full, which cannot be "
                         "reloaded exactly); train it again")
    try:
        objective = Objective.from_dict(state["objective"])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: checkpoint has no usable objective ({err})") from err
    return Checkpoint(path, int(state["step"]), objective.name, model, state.get("data") or {},
                      state.get("train") or {}, state, objective)
