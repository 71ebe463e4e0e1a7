"""Exact optimal losses to validate the estimators against.

- Gaussian data x0 ~ N(mu, Sigma): the posterior is Gaussian with covariance Sigma (Sigma + s^2 I)^-1 s^2
  whatever x~ is, so J*(s) = mean_i l_i s^2 / (l_i + s^2) over the eigenvalues l_i of Sigma.
- The two-point dataset {-1, +1}: E[x0 | x~] = tanh(x~ / s^2), so J*(s) = E[1 - tanh^2(x~ / s^2)] with
  x~ ~ N(1, s^2), a 1-D integral (a dense trapezoid rule): fast and exact, with a finite dataset's tail.
- A 1-D dataset of a few points: J*(s) = int p(x~) Var(x0 | x~) dx~ by adaptive quadrature, with
  p(x~) = mean_n N(x~; x_n, s^2) and the posterior a softmax over the points.
"""

from __future__ import annotations

import numpy as np
from scipy import integrate
from scipy.special import logsumexp


def gaussian_optimal_loss(sigma, eigenvalues) -> np.ndarray:
    """Per-dimension J*(sigma) of Gaussian data with covariance eigenvalues `eigenvalues`."""
    lam = np.asarray(eigenvalues, dtype=float)
    s2 = np.asarray(sigma, dtype=float)[..., None] ** 2
    return np.mean(lam * s2 / (lam + s2), axis=-1)


def _posterior_variance_density(x: float, points: np.ndarray, log_prior: np.ndarray, sigma: float) -> float:
    """p(x~) Var(x0 | x~) at x~ = x for a weighted 1-D point set."""
    logits = log_prior - 0.5 * ((x - points) / sigma) ** 2
    log_norm = logsumexp(logits)
    w = np.exp(logits - log_norm)
    mean = w @ points
    var = w @ (points - mean) ** 2
    return float(np.exp(log_norm) / (sigma * np.sqrt(2 * np.pi)) * var)


def optimal_loss_1d(points, sigma: float, weights=None) -> float:
    """J*(sigma) of a 1-D dataset (optionally weighted) by adaptive quadrature over x~."""
    points = np.asarray(points, dtype=float).ravel()
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    prior = np.full(len(points), 1 / len(points)) if weights is None else np.asarray(weights, float)
    prior = prior / prior.sum()
    log_prior = np.log(prior)
    lo, hi = points.min() - 12 * sigma, points.max() + 12 * sigma
    # Var(x0 | x~) changes fastest between neighbouring points: break the range there.
    mids = (points[:, None] + np.array([-1, 0, 1]) * min(sigma, np.ptp(points) + sigma)).ravel()
    breaks = np.unique(np.clip(np.concatenate([points, (np.sort(points)[1:] + np.sort(points)[:-1]) / 2,
                                               mids]), lo, hi))
    value, _ = integrate.quad(_posterior_variance_density, lo, hi, args=(points, log_prior, sigma),
                              points=breaks[(breaks > lo) & (breaks < hi)], limit=500,
                              epsabs=1e-13, epsrel=1e-10)
    return value


def optimal_loss_1d_curve(points, sigmas, weights=None) -> np.ndarray:
    """optimal_loss_1d at every sigma."""
    return np.array([optimal_loss_1d(points, float(s), weights) for s in sigmas])


def two_point_optimal_loss(sigma) -> np.ndarray:
    """Exact J*(sigma) of the dataset {-1, +1} (variance 1), by a dense trapezoid rule over x~."""
    out = []
    for s in np.atleast_1d(np.asarray(sigma, dtype=float)):
        x = np.linspace(1 - 14 * s, 1 + 14 * s, 20001)
        sech2 = np.cosh(np.minimum(np.abs(x) / s**2, 350.0)) ** -2.0  # 0 to float64 beyond 350
        f = np.exp(-0.5 * ((x - 1) / s) ** 2) / (s * np.sqrt(2 * np.pi)) * sech2
        out.append(np.sum((f[1:] + f[:-1]) / 2 * np.diff(x)))
    return np.array(out) if np.ndim(sigma) else out[0]
