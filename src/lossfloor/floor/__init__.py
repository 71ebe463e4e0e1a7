"""The optimal loss J*(sigma): the posterior-moment kernel, estimator strategies (full, DOL, cDOL, SNIS) with
adaptive rounds and control variates, the curve and its totals, and exact references."""

from lossfloor.floor.config import ESTIMATORS, FORMS, EstimatorConfig, LevelEstimate
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.floor.estimator import Estimator
from lossfloor.floor.kernel import PosteriorStats, posterior_stats
from lossfloor.floor.strategies import EstimatorStrategy, FullEstimator, Round, SubsetEstimator
from lossfloor.floor.totals import TotalLoss

__all__ = ["ESTIMATORS", "FORMS", "Estimator", "EstimatorConfig", "EstimatorStrategy", "FullEstimator",
           "LevelEstimate", "OptimalLossCurve", "PosteriorStats", "Round", "SubsetEstimator", "TotalLoss",
           "posterior_stats"]
