"""Two gloo ranks on this machine give the single-process answer: rows sharded, partial sums all-reduced."""

import functools
import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lossfloor.data.rows import open_rows
from lossfloor.floor.config import EstimatorConfig
from lossfloor.floor.distributed import RowWindow, rank_device, shard_bounds, sharded_posterior_stats, world
from lossfloor.floor.estimator import Estimator
from lossfloor.floor.kernel import posterior_stats

SIGMAS = (0.15, 0.6, 3.0)
CONFIGS = {
    "full": EstimatorConfig("full", queries=96, batch_size=40, chunk_size=64),
    "cdol": EstimatorConfig("cdol", queries=96, subset=80, batch_size=40, chunk_size=64),
}


def _data() -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    return torch.randn(301, 5, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 2, 0.5, 1, 3]) + 4


def _levels(rows, labels=None) -> dict:
    out = {}
    for name, config in CONFIGS.items():
        est = Estimator(rows, config, labels=labels, dtype=torch.float64)
        out[name] = [[e.loss, e.stderr] for e in (est.level(s, seed=7) for s in SIGMAS)]
    return out


def _rank_main(rank: int, size: int, store_path: str, out_path: str) -> None:
    store = dist.FileStore(store_path, size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=size)
    try:
        assert world() == (rank, size)
        rows = _data()
        result = {"plain": _levels(rows), "numpy": _levels(rows.numpy()),
                  "classes": _levels(rows, labels=np.arange(len(rows)) % 3)}
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    out = tmp / "rank0.json"
    mp.spawn(_rank_main, args=(2, str(tmp / "store"), str(out)), nprocs=2, join=True)
    return json.loads(out.read_text())


@functools.cache
def _single_process(case: str) -> dict:
    return _levels(_data(), labels=np.arange(301) % 3 if case == "classes" else None)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["plain", "numpy", "classes"])
@pytest.mark.parametrize("estimator", ["full", "cdol"])
def test_two_ranks_equal_single_process(two_rank_result, estimator, case):
    single = _single_process(case)[estimator]
    sharded = two_rank_result[case][estimator]
    assert np.allclose(sharded, single, rtol=1e-10, atol=1e-12)
    assert all(loss > 0 and stderr > 0 for loss, stderr in single)  # a non-trivial comparison


def test_shards_cover_rows_once():
    for n, size in [(10, 3), (2, 4), (301, 2)]:
        bounds = [shard_bounds(n, r, size) for r in range(size)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))


def test_row_window_slices_lazily():
    rows = np.arange(20.0).reshape(10, 2)
    window = RowWindow(rows, 3, 8)
    assert len(window) == 5
    assert np.array_equal(window[1:3], rows[4:6])
    assert np.array_equal(window[4:100], rows[7:8])
    with pytest.raises(ValueError, match="contiguous"):
        window[::2]


def test_without_process_group_is_the_plain_kernel():
    rows = _data()
    q = rows[:7] + 0.3
    a, b = sharded_posterior_stats(q, rows, 0.7, chunk_size=50), posterior_stats(q, rows, 0.7, chunk_size=50)
    assert torch.equal(a.mean(), b.mean()) and torch.equal(a.variance(), b.variance())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("estimator", ["full", "cdol"])
def test_cuda_matches_cpu(estimator, tmp_path):
    rows, config = _data(), CONFIGS[estimator]
    np.save(tmp_path / "rows.npy", rows.numpy())
    device = rank_device("cuda")
    assert not torch.backends.cuda.matmul.allow_tf32
    cpu = Estimator(rows, config, dtype=torch.float64)
    for source in (rows, open_rows(tmp_path / "rows.npy")):
        gpu = Estimator(source, config, device=device, dtype=torch.float64)
        for sigma in SIGMAS:
            a, b = gpu.level(sigma, seed=7), cpu.level(sigma, seed=7)
            assert a.loss == pytest.approx(b.loss, rel=1e-10)
            assert a.stderr == pytest.approx(b.stderr, rel=1e-8)
    gpu32, cpu32 = (Estimator(rows, config, device=d) for d in (device, "cpu"))
    for sigma in SIGMAS:
        a, b = gpu32.level(sigma, seed=7), cpu32.level(sigma, seed=7)
        assert a.loss == pytest.approx(b.loss, rel=1e-4, abs=1e-7)  # float32, TF32 off
