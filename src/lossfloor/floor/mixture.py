"""The floor of a Gaussian mixture: each data point n is a Gaussian N(mu_n, diag s_n^2), as stochastic VAE
latents are (EDM2 and trainers that cache `latent_dist` draw z = mu_n + s_n eps every step).

For a query x~ = z + sigma eps' the posterior over components uses the covariance s_n^2 + sigma^2 per
dimension; writing a_n = 1 / (s_n^2 + sigma^2) (per dimension),

    log pi_n(x~) = -1/2 sum_d a_nd (x~_d - mu_nd)^2 - 1/2 sum_d log(s_nd^2 + sigma^2) + const,
    m_n - x~    = sigma^2 a_n (mu_n - x~)                  (m_n: component n's posterior mean),
    tr V_n      = sigma^2 sum_d s_nd^2 a_nd                 (its posterior variance, summed).

The kernel works relative to a reference r = beta x~ (beta = s^2 / (s^2 + sigma^2) for the mean s^2: r
follows the posterior mean, which keeps the cancellation in E||x0 - r||^2 - ||E[x0 - r]||^2 small at every
sigma); m_n - r = t_n + u_n x~ with t_n = sigma^2 a_n mu_n and u_n = s_n^2 a_n - beta.  Per chunk of
components one GEMM of [x~^2, x~] (M x 2D) against [-a/2, a mu ; u^2, 2 t u] (2C x 2D) gives the logits and
the per-pair ||m_n - r||^2, and one GEMM of the weights against [-a/2, a mu] gives sum_n w_n a_n and
sum_n w_n a_n mu_n: 6 M C D multiply-adds against the point kernel's 2.  The sums merge
associatively with the online log-sum-exp, like `PosteriorStats`.

With s = 0 the queries are exactly those of the point estimator (x~ = mu_src + sqrt(s^2 + sigma^2) eps with
the same eps), so the two agree to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from lossfloor.core.errors import InputError
from lossfloor.floor.config import EstimatorConfig, stratified_sources
from lossfloor.floor.kernel import DEFAULT_CHUNK, F64, exp_floor, rescale
from lossfloor.floor.matrix import DataMatrix, gather_rows
from lossfloor.floor.values import query_value

# What the mixture estimator does not do (yet): one line each, raised as InputError.
UNSUPPORTED = {
    "estimator": "the subset estimators (cdol, dol, snis) are derived for point data; a Gaussian-mixture "
                 "(latent mean/std) dataset takes --estimator full",
    "prune": "exact pruning is not derived for Gaussian-mixture data (latent mean/std); drop --prune",
    "control_subset": "control variates are not available for Gaussian-mixture data (latent mean/std); "
                      "drop --control-subset",
    "distributed": "a Gaussian-mixture (latent mean/std) dataset is estimated in one process, not under "
                   "torchrun",
    "rows": "a Gaussian-mixture (latent mean/std) dataset is held in memory (no --out-of-core)",
}


@dataclass
class MixtureStats:
    """Unnormalised posterior sums over mixture components, scaled by exp(-log_max) per query, relative to
    a reference r = beta x~ per query; merge with `merge` (sums over disjoint sets of components for the same
    queries and reference)."""

    reference: Tensor  # (M, D) r = beta x~, float64 (the same on both sides of a merge)
    log_max: Tensor  # (M,) running maximum logit
    weight: Tensor  # (M,) sum_n w_n, w_n = exp(l_n - log_max)
    weighted_shift: Tensor  # (M, D) sum_n w_n (m_n - r)
    weighted_sq: Tensor  # (M,) sum_n w_n (||m_n - r||^2 + tr V_n)

    def merge(self, other: MixtureStats) -> MixtureStats:
        """Combine sums over two disjoint sets of components (log-sum-exp form)."""
        new_max, a, b = rescale(self.log_max, other.log_max)
        return MixtureStats(
            self.reference, new_max,
            a * self.weight + b * other.weight,
            a[:, None] * self.weighted_shift + b[:, None] * other.weighted_shift,
            a * self.weighted_sq + b * other.weighted_sq,
        )

    def shift(self) -> Tensor:
        """E[x0 | x~] - r, shape (M, D)."""
        return self.weighted_shift / self.weight[:, None]

    def mean(self) -> Tensor:
        """Posterior mean E[x0 | x~], shape (M, D)."""
        return self.reference + self.shift()

    def variance(self) -> Tensor:
        """tr Var(x0 | x~) = E||x0 - r||^2 - ||E[x0 - r]||^2 (between and within components), >= 0."""
        return (self.weighted_sq / self.weight - self.shift().pow(2).sum(1)).clamp_min(0)


def reference_weight(std: Tensor, sigma: float) -> float:
    """beta = s^2 / (s^2 + sigma^2) for the mean s^2 of `std`: the kernel's reference r = beta x~ tracks the
    posterior mean (x~ where sigma << s, 0 where sigma >> s or s = 0), which keeps E||x0 - r||^2 small
    against the variance it is reduced to (float32 cancellation)."""
    s2 = std.double().pow(2).mean().item()
    return s2 / (s2 + float(sigma) ** 2)


def mixture_posterior_stats(queries: Tensor, means: Tensor, std: Tensor, sigma: float, *,
                            beta: float | None = None, chunk_size: int = DEFAULT_CHUNK,
                            coefficients: list | None = None) -> MixtureStats:
    """Posterior sums of `queries` (M, D) over the components N(means[n], diag std[n]^2) (tensors (N, D)),
    computed in the queries' dtype on their device, accumulated in float64.  `beta`: the reference's weight
    (default `reference_weight(std, sigma)`; give it to merge sums over parts of the components).
    `coefficients`: `mixture_coefficients` of the same arguments, when many batches of queries share them
    (building them per call cost ~25% of the kernel's time on the CPU)."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    device, dtype = queries.device, queries.dtype
    m, d = queries.shape
    var = float(sigma) ** 2
    beta = reference_weight(std, sigma) if beta is None else float(beta)
    features = torch.cat((queries.pow(2), queries), 1)  # [x~^2, x~]
    q64 = queries.to(F64)
    zeros = torch.zeros(m, dtype=F64, device=device)
    total = MixtureStats(beta * q64, torch.full((m,), -torch.inf, dtype=F64, device=device), zeros,
                         torch.zeros(m, d, dtype=F64, device=device), zeros)
    floor = exp_floor(dtype)
    for index, start in enumerate(range(0, len(means), chunk_size)):
        if coefficients is not None:
            weights, bias, second_bias = coefficients[index]
        else:
            rows = slice(start, start + chunk_size)
            weights, bias, second_bias = _coefficients(means[rows], std[rows], var, beta, dtype, device)
        c = len(weights) // 2
        pair = features @ weights.T  # (M, 2C): logits and ||m_n - r||^2, less their constants
        logits = pair[:, :c].add_(bias.to(dtype))
        second = pair[:, c:].add_(second_bias.to(dtype))
        cmax = logits.amax(1)
        safe = torch.where(torch.isfinite(cmax), cmax, torch.zeros_like(cmax))
        w = logits.sub_(safe[:, None])
        if floor is not None:  # exp is slow where it underflows (kernel.posterior_stats)
            w.clamp_(min=floor)
        w.exp_()
        moments = (w @ weights[:c]).to(F64)  # [-1/2 sum w a, sum w a mu]
        weight = w.to(F64).sum(1)
        # sum w (t + u x~) = sigma^2 sum w a mu + x~ ((1 - beta) sum w - sigma^2 sum w a)
        shift = var * moments[:, d:] + q64 * ((1 - beta) * weight[:, None] + 2 * var * moments[:, :d])
        sq = torch.einsum("mc,mc->m", w, second).to(F64)
        total = total.merge(MixtureStats(total.reference, cmax.to(F64), weight, shift, sq))
    return total


COEFFICIENT_BYTES = 1 << 30  # `mixture_values` keeps a level's coefficients (4 N D values) up to this size


def mixture_coefficients(means: Tensor, std: Tensor, sigma: float, beta: float, dtype, device,
                         chunk_size: int = DEFAULT_CHUNK) -> list:
    """Every chunk's GEMM coefficients and constants at `sigma`, for `mixture_posterior_stats`."""
    return [_coefficients(means[start:start + chunk_size], std[start:start + chunk_size], float(sigma) ** 2,
                          beta, dtype, device) for start in range(0, len(means), chunk_size)]


def _coefficients(means: Tensor, std: Tensor, var: float, beta: float, dtype, device):
    """One chunk's GEMM coefficients [-a/2, a mu ; u^2, 2 t u] (2C x 2D) in `dtype`, built in place (float64
    temporaries cost 6x the GEMMs on the CPU), and the float64 per-component constants: the logit's bias
    -1/2 sum_d (a mu^2 + log(s^2 + sigma^2)) and ||t||^2 + tr V_n."""
    mu = means.to(device=device, dtype=dtype)
    c, d = mu.shape
    weights = torch.empty(2 * c, 2 * d, dtype=dtype, device=device)
    a, a_mu, u2, tu = weights[:c, :d], weights[:c, d:], weights[c:, :d], weights[c:, d:]
    s2 = torch.mul(std, std, out=u2) if std.device == device and std.dtype == dtype else \
        std.to(device=device, dtype=dtype).pow(2)
    torch.add(s2, var, out=a)
    log_v = _sum64(torch.log(a))
    a.reciprocal_()
    within = var * _sum64(torch.mul(s2, a, out=tu))  # tr V_n = sigma^2 sum s^2 a
    torch.mul(a, mu, out=a_mu)
    bias = -0.5 * _sum64(torch.mul(a_mu, mu, out=tu)) - 0.5 * log_v
    # u = s^2 a - beta = (1 - beta) - sigma^2 a; t = sigma^2 a mu
    torch.mul(a_mu, var, out=tu)  # t
    second_bias = _sum64(tu * tu) + within
    torch.mul(a, -var, out=u2).add_(1.0 - beta)  # u
    tu.mul_(u2).mul_(2.0)  # 2 t u
    u2.mul_(u2)  # u^2
    a.mul_(-0.5)
    return weights, bias, second_bias


def _sum64(x: Tensor, block: int = 256) -> Tensor:
    """Row sums in float64, converting `block` rows at a time (torch.sum(dtype=float64) was 15x slower)."""
    out = torch.empty(len(x), dtype=F64, device=x.device)
    buffer = torch.empty(min(block, len(x)), x.shape[1], dtype=F64, device=x.device)
    for first in range(0, len(x), block):
        rows = x[first:first + block]
        torch.sum(buffer[:len(rows)].copy_(rows), 1, out=out[first:first + len(rows)])
    return out


class MixtureMatrix(DataMatrix):
    """A Gaussian mixture's component means (the rows, centred like points) and per-dimension standard
    deviations; the variance (large-sigma limit of J*) is that of the means plus the mean of s^2."""

    def __init__(self, rows, std, *, device="cpu", dtype=torch.float32, chunk_size: int = DEFAULT_CHUNK):
        if not isinstance(rows, Tensor) or not isinstance(std, Tensor):
            raise InputError(UNSUPPORTED["rows"])
        super().__init__(rows, device=device, dtype=dtype, chunk_size=chunk_size)
        self.std = std.reshape(self.n, -1).to(device=device, dtype=dtype)
        if self.std.shape != self.rows.shape:
            raise InputError(f"std has shape {tuple(std.shape)}, the means {tuple(rows.shape)}")
        self.within_sq = self.std.double().pow(2).sum().item() / self.n  # mean tr Cov within a component
        self.mean_sq += self.within_sq

    def centered_std(self, idx: Tensor) -> Tensor:
        return gather_rows(self.std, idx, self.device, self.dtype)


def check_mixture_config(config: EstimatorConfig) -> None:
    """One line for what the mixture estimator does not support."""
    if config.estimator != "full":
        raise InputError(UNSUPPORTED["estimator"])
    if config.prune:
        raise InputError(UNSUPPORTED["prune"])
    if config.control_subset is not None:
        raise InputError(UNSUPPORTED["control_subset"])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise InputError(UNSUPPORTED["distributed"])


def mixture_queries(x_src: Tensor, s_src: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """Queries drawn from the mixture: z = mu + s eps1, x~ = z + sigma eps2, i.e. mu + sqrt(s^2 + sigma^2) eps
    (one draw, the point estimator's eps: with s = 0 the queries are exactly its queries)."""
    eps = torch.randn(x_src.shape, generator=generator, dtype=F64)
    scale = float(sigma) * torch.sqrt(1.0 + (s_src.double().cpu() / float(sigma)) ** 2)
    return x_src + (scale * eps).to(device=x_src.device, dtype=x_src.dtype)


def mixture_values(data: MixtureMatrix, sigma: float, config: EstimatorConfig, generator: torch.Generator,
                   progress) -> tuple[Tensor, Tensor]:
    """Per-query values (per dimension) over all components, and the queries' sources (stratified)."""
    sources = stratified_sources(data.n, config.queries, generator)
    means, _ = data.kernel_rows
    beta = reference_weight(data.std, sigma)
    size = 4 * data.n * data.dim * data.std.element_size()
    coefficients = None
    if len(sources) > config.batch_size and size <= COEFFICIENT_BYTES:
        coefficients = mixture_coefficients(means, data.std, sigma, beta, data.dtype, data.device,
                                            config.chunk_size)
    out = []
    for idx in sources.split(config.batch_size):
        queries = mixture_queries(data.centered_rows(idx), data.centered_std(idx), sigma, generator)
        stats = mixture_posterior_stats(queries, means, data.std, sigma, beta=beta,
                                        chunk_size=config.chunk_size, coefficients=coefficients)
        out.append(query_value(stats, data, config.form).cpu())
        if progress is not None:
            progress(len(idx))
    return torch.cat(out), sources
