"""Networks, `Denoiser` (any network + objective -> an x0-denoiser) and the model's x0 loss."""

from lossfloor.nets.denoiser import Denoiser, x0_loss
from lossfloor.nets.networks import ModelConfig, build_model, parameter_count

__all__ = ["Denoiser", "ModelConfig", "build_model", "parameter_count", "x0_loss"]
