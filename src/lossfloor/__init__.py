"""lossfloor: the exact optimal training loss of diffusion models on a finite dataset."""

from lossfloor.floor.config import EstimatorConfig, LevelEstimate
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.floor.estimator import Estimator
from lossfloor.floor.totals import TotalLoss
from lossfloor.objective.objective import Objective, get_objective, objective_names

__all__ = [
    "Estimator", "EstimatorConfig", "LevelEstimate", "Objective", "OptimalLossCurve", "TotalLoss",
    "get_objective", "objective_names",
]
__version__ = "0.1.0"
