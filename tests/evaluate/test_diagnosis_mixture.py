"""diagnose on stochastic latents: the model is scored on z drawn from the Gaussian mixture against the
mixture's J*; the exact mixture posterior mean has gap ~ 0, the means' (points') posterior mean does not."""

import numpy as np
import torch

from lossfloor.evaluate.diagnosis import diagnose
from lossfloor.floor.config import EstimatorConfig
from lossfloor.floor.estimator import Estimator
from lossfloor.floor.mixture import mixture_posterior_stats
from lossfloor.objective.objective import get_objective

SIGMAS = [0.05, 0.3, 1.0, 3.0]
QUERIES = 2048


def _mixture():
    rng = np.random.default_rng(0)
    means = torch.as_tensor(rng.standard_normal((6, 3)), dtype=torch.float64)
    std = torch.as_tensor(rng.uniform(0.2, 0.8, (6, 3)), dtype=torch.float64)
    return means, std


def _posterior_mean(means, std):
    def denoise(x_tilde, sigma):
        return mixture_posterior_stats(x_tilde.double(), means, std, float(sigma)).mean().to(x_tilde.dtype)
    return denoise


def _diagnosis(denoiser):
    means, std = _mixture()
    curve = Estimator(means.float(), EstimatorConfig(queries=QUERIES), std=std.float(),
                      dtype=torch.float64).curve(SIGMAS, seed=0, progress=False)
    return diagnose(denoiser, get_objective("edm"), curve, means.float(), queries=QUERIES, seed=1,
                    sigmas=SIGMAS, train_std=std.float())


def test_exact_mixture_posterior_mean_has_no_gap():
    means, std = _mixture()
    result = _diagnosis(_posterior_mean(means, std))
    for g in result.train:
        assert abs(g.gap) < 4 * g.gap_stderr, (g.sigma, g.gap, g.gap_stderr)
    total = result.totals["train"]
    assert abs(total["gap"]) < 4 * total["gap_stderr"] + 1e-3 * total["optimal"]
    assert not result.violations


def test_the_means_posterior_mean_is_above_the_mixture_floor():
    means, std = _mixture()
    result = _diagnosis(_posterior_mean(means, torch.zeros_like(std)))  # the means taken as points
    small = result.train[0]  # sigma = 0.05 < s: the points' denoiser snaps to the nearest mean, off by <= s^2
    assert small.gap > 10 * small.gap_stderr
    assert 0.5 * float(std.pow(2).mean()) < small.gap < 1.1 * float(std.pow(2).mean())
