"""lossfloor: the exact optimal training loss of diffusion models on a finite dataset."""

from .curve import OptimalLossCurve, TotalLoss
from .estimators import Estimator, EstimatorConfig, LevelEstimate
from .formulation import Objective, get_objective, objective_names

__all__ = [
    "Estimator", "EstimatorConfig", "LevelEstimate", "Objective", "OptimalLossCurve", "TotalLoss",
    "get_objective", "objective_names",
]
__version__ = "0.1.0"
