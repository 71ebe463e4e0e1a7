"""The optimal loss J*(sigma): the posterior-moment kernel, estimators (full, DOL, cDOL, SNIS) with
adaptive rounds and control variates, the curve and its totals, and exact references."""

from lossfloor.floor.config import EstimatorConfig, LevelEstimate
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.floor.estimator import Estimator
from lossfloor.floor.kernel import PosteriorStats, posterior_stats
from lossfloor.floor.totals import TotalLoss

__all__ = ["Estimator", "EstimatorConfig", "LevelEstimate", "OptimalLossCurve", "PosteriorStats", "TotalLoss",
           "posterior_stats"]
