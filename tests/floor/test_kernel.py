"""The streamed posterior kernel against a dense float64 softmax."""

import numpy as np
import pytest
import torch

from lossfloor.floor.kernel import PosteriorStats, posterior_stats


def _data(n=300, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g, dtype=torch.float64) * 2 - 1, g


def dense(queries, data, sigma, self_index=None, self_log_weight=0.0):
    """Posterior mean and variance by an explicit (M, N) softmax in float64."""
    logits = -torch.cdist(queries, data).pow(2) / (2 * sigma**2)
    if self_index is not None:
        logits[torch.arange(len(queries)), self_index] += self_log_weight
    w = torch.softmax(logits, 1)
    mean = w @ data
    var = w @ data.pow(2).sum(1) - mean.pow(2).sum(1)
    return mean, var


@pytest.mark.parametrize("sigma", [0.03, 0.3, 3.0])
@pytest.mark.parametrize("chunk", [7, 64, 8192])
def test_matches_dense_softmax(sigma, chunk):
    data, g = _data()
    queries = data[:40] + sigma * torch.randn(40, 5, generator=g, dtype=torch.float64)
    stats = posterior_stats(queries, data, sigma, chunk_size=chunk)
    mean, var = dense(queries, data, sigma)
    torch.testing.assert_close(stats.mean(), mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(stats.variance(), var.clamp_min(0), rtol=1e-8, atol=1e-12)


def test_shift_does_not_change_the_posterior():
    data, g = _data()
    queries = data[:20] + 0.5 * torch.randn(20, 5, generator=g, dtype=torch.float64)
    shift = torch.tensor([0.3, -0.2, 0.1, 0.0, 0.5], dtype=torch.float64)
    stats = posterior_stats(queries - shift, data, 0.5, shift=shift, chunk_size=50)
    mean, var = dense(queries, data, 0.5)
    torch.testing.assert_close(stats.mean() + shift, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(stats.variance(), var, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("log_w", [-np.log(16.0), -np.inf])
def test_self_pair_reweighting(log_w):
    data, g = _data(n=100)
    idx = torch.arange(30, 60)
    queries = data[idx] + 0.2 * torch.randn(30, 5, generator=g, dtype=torch.float64)
    # data offered from row 20 on, so global indices must be translated through row_offset
    stats = posterior_stats(queries, data[20:], 0.2, self_index=idx, self_log_weight=log_w, row_offset=20,
                            chunk_size=16)
    mean, var = dense(queries, data[20:], 0.2, self_index=idx - 20, self_log_weight=log_w)
    torch.testing.assert_close(stats.mean(), mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(stats.variance(), var.clamp_min(0), rtol=1e-8, atol=1e-12)


def test_merge_of_disjoint_parts_equals_the_whole():
    data, g = _data()
    queries = torch.randn(10, 5, generator=g, dtype=torch.float64)
    whole = posterior_stats(queries, data, 0.4)
    merged = posterior_stats(queries, data[:111], 0.4).merge(posterior_stats(queries, data[111:], 0.4))
    torch.testing.assert_close(merged.mean(), whole.mean(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(merged.second_moment(), whole.second_moment(), rtol=1e-12, atol=1e-14)
    zeros = torch.zeros(10, dtype=torch.float64)
    empty = PosteriorStats(zeros - torch.inf, zeros, torch.zeros(10, 5, dtype=torch.float64), zeros)
    torch.testing.assert_close(empty.merge(whole).mean(), whole.mean())


def test_memmap_input(tmp_path):
    data, g = _data()
    path = tmp_path / "rows.npy"
    np.save(path, data.numpy().astype(np.float32))
    mm = np.load(path, mmap_mode="r")
    queries = data[:25].float() + 0.3 * torch.randn(25, 5, generator=g)
    from_mm = posterior_stats(queries, mm, 0.3, chunk_size=64)
    from_tensor = posterior_stats(queries, data.float(), 0.3, chunk_size=64)
    torch.testing.assert_close(from_mm.mean(), from_tensor.mean(), rtol=0, atol=0)


SIGMAS = [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_over_the_whole_sigma_range(dtype):
    # Image-like data: D = 64 in [-1, 1], including an exact duplicate row.
    g = torch.Generator().manual_seed(1)
    data = (torch.rand(500, 64, generator=g) * 2 - 1).to(dtype)
    data[1] = data[0]
    for sigma in SIGMAS:
        queries = data[:50] + sigma * torch.randn(50, 64, generator=g).to(dtype)
        stats = posterior_stats(queries, data, sigma, chunk_size=128)
        for value in (stats.mean(), stats.variance(), stats.second_moment()):
            assert torch.isfinite(value).all(), (sigma, dtype)
        assert (stats.variance() >= 0).all()
        assert stats.mean().abs().max() <= 1 + 1e-5  # a convex combination of the rows


def test_float32_agrees_with_float64():
    g = torch.Generator().manual_seed(2)
    data = torch.rand(2000, 32, generator=g, dtype=torch.float64) * 2 - 1
    for sigma in SIGMAS:
        queries = data[:64] + sigma * torch.randn(64, 32, generator=g, dtype=torch.float64)
        s64 = posterior_stats(queries, data, sigma)
        s32 = posterior_stats(queries.float(), data.float(), sigma)
        # fp32 logits carry a relative error ~1e-7 of ||q||^2 / sigma^2, which moves weights between
        # near ties; measured: means within 2e-6, variances (E||x||^2 ~ 10 here) within 5e-6.
        torch.testing.assert_close(s32.mean(), s64.mean(), rtol=0, atol=1e-5, msg=f"sigma={sigma}")
        torch.testing.assert_close(s32.variance(), s64.variance(), rtol=0, atol=3e-5, msg=f"sigma={sigma}")
        if sigma <= 1e-2:  # one-hot posterior: no float32 floor on the variance
            assert torch.all(s32.variance() == 0)


def test_rejects_nonpositive_sigma():
    data, _ = _data()
    with pytest.raises(ValueError, match="positive"):
        posterior_stats(data[:2], data, 0.0)


def test_precomputed_row_norms_give_the_same_stats():
    from lossfloor.floor.kernel import row_square_norms
    g = torch.Generator().manual_seed(5)
    x, q = torch.randn(300, 6, generator=g), torch.randn(20, 6, generator=g)
    shift = x.double().mean(0)
    a = posterior_stats(q, x, 0.7, shift=shift, chunk_size=64)
    sq = row_square_norms(x, shift, torch.float32)
    b = posterior_stats(q, x, 0.7, shift=shift, chunk_size=64, row_sq=sq)
    for u, v in zip((a.log_max, a.weight, a.weighted_x, a.weighted_sq), (b.log_max, b.weight, b.weighted_x,
                                                                         b.weighted_sq), strict=True):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=0)


def test_exp_floor_changes_sums_by_less_than_its_bound(monkeypatch):
    # Small sigma: nearly every logit is far below float32's normal range, where the floor applies.
    import lossfloor.floor.kernel as kernel
    g = torch.Generator().manual_seed(6)
    data = torch.rand(3000, 16, generator=g) * 2 - 1
    queries = data[:32] + 0.05 * torch.randn(32, 16, generator=g)
    floored = posterior_stats(queries, data, 0.05, chunk_size=512)
    monkeypatch.setattr(kernel, "exp_floor", lambda dtype: None)
    exact = posterior_stats(queries, data, 0.05, chunk_size=512)
    bound = len(data) * np.exp(kernel.math.log(torch.finfo(torch.float32).tiny) + 1.0)  # N e^floor
    assert bound < 1e-33
    torch.testing.assert_close(floored.log_max, exact.log_max, rtol=0, atol=0)
    for a, b in ((floored.weight, exact.weight), (floored.weighted_sq, exact.weighted_sq)):
        assert torch.all((a - b).abs() <= bound * b.abs() + 1e-300)
    torch.testing.assert_close(floored.mean(), exact.mean(), rtol=0, atol=0)
    assert torch.equal(floored.variance(), exact.variance())


def test_exp_floor_only_where_it_is_negligible():
    from lossfloor.floor.kernel import exp_floor
    assert exp_floor(torch.float32) < -86 and exp_floor(torch.float64) < -707
    assert exp_floor(torch.float16) is None  # e^floor would be ~1e-4 of the largest weight
