"""The top-k posterior (evaluate/topk.py): with k = N it is the exact posterior; with k < N it holds the k
nearest rows and its log-partition is below the exact one."""

import pytest
import torch

from lossfloor.evaluate.topk import log_partition, nearest_rows, topk_posterior
from lossfloor.floor.kernel import posterior_stats


def _data(dtype):
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(50, 6, generator=gen, dtype=torch.float64).to(dtype)
    shift = rows.double().mean(0).to(dtype)
    queries = (rows[:7] - shift) + 0.8 * torch.randn(7, 6, generator=gen, dtype=torch.float64).to(dtype)
    return rows, shift, queries


@pytest.mark.parametrize("sigma", [0.05, 0.8, 30.0])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_k_equal_n_is_the_exact_posterior(sigma, dtype, tol):
    rows, shift, queries = _data(dtype)
    exact = posterior_stats(queries, rows, sigma, shift=shift, chunk_size=16)
    top = topk_posterior(queries, rows, sigma, len(rows), shift=shift, chunk_size=16)
    assert torch.allclose(top.mean(), exact.mean(), rtol=tol, atol=tol)
    assert torch.allclose(top.variance(), exact.variance(), rtol=tol, atol=tol)
    assert torch.allclose(log_partition(top), log_partition(exact), rtol=tol, atol=tol)


def test_nearest_rows_are_the_k_nearest():
    rows, shift, queries = _data(torch.float64)
    _, idx = nearest_rows(queries, rows, 5, shift=shift, chunk_size=8)  # chunks smaller than N: merging
    dist = torch.cdist(queries, rows - shift)
    assert torch.equal(idx, dist.topk(5, largest=False).indices)
    assert idx.shape == (7, 5)
    assert nearest_rows(queries, rows, 500, shift=shift)[1].shape == (7, 50)  # k capped at N


def test_truncation_misses_mass_and_shrinks_the_variance_at_large_sigma():
    rows, shift, queries = _data(torch.float64)
    exact = posterior_stats(queries, rows, 30.0, shift=shift)
    top = topk_posterior(queries, rows, 30.0, 5, shift=shift)
    assert torch.all(log_partition(top) < log_partition(exact))
    assert top.variance().mean() < 0.5 * exact.variance().mean()
