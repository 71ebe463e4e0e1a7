"""Out-of-core rows (.npy files, folders of shards, memmaps) give the in-memory answer, read in chunks."""

import json
import tracemalloc

import numpy as np
import pytest
import torch

from lossfloor.app.cli import main
from lossfloor.data.load import load_dataset
from lossfloor.data.rows import IndexedRows, NpyRows, ShardedRows, fingerprint_rows, open_rows, take_rows
from lossfloor.floor.config import EstimatorConfig
from lossfloor.floor.estimator import Estimator


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(230, 6, 5), dtype=np.uint8)
    np.save(tmp_path / "images.npy", arr)
    for k, (lo, hi) in enumerate([(0, 100), (100, 101), (101, 230)]):
        (tmp_path / "shards").mkdir(exist_ok=True)
        np.save(tmp_path / "shards" / f"part{k:02d}.npy", arr[lo:hi])
    return tmp_path


def test_npy_rows_read_like_the_data_loader(images):
    rows = open_rows(images / "images.npy")
    ds = load_dataset(str(images / "images.npy"))
    assert rows.shape == tuple(ds.x.shape) and rows.dtype == np.float32
    assert np.array_equal(rows[17:45], ds.x[17:45].numpy())
    assert np.array_equal(rows[np.array([3, 200, 4])], ds.x[[3, 200, 4]].numpy())
    assert np.array_equal(rows[-1], ds.x[-1].numpy())
    flat = rows.reshape(len(rows), -1)
    assert np.array_equal(flat[225:999], ds.rows()[225:].numpy())
    assert fingerprint_rows(rows, chunk_size=64) == ds.fingerprint


def test_folder_of_shards_is_the_concatenation(images):
    whole, sharded = open_rows(images / "images.npy"), open_rows(images / "shards")
    assert isinstance(sharded, ShardedRows) and sharded.shape == whole.shape
    for sl in [slice(0, 230), slice(95, 105), slice(100, 101), slice(229, 400), slice(5, 5)]:
        assert np.array_equal(sharded[sl], whole[sl])
    idx = np.array([229, 0, 100, 101, 99, -1])
    assert np.array_equal(sharded[idx], whole[idx])
    assert np.array_equal(sharded[100], whole[100])
    assert fingerprint_rows(sharded, chunk_size=7) == fingerprint_rows(whole)


@pytest.mark.parametrize("estimator", ["full", "cdol"])
def test_estimates_match_in_memory(images, estimator):
    config = EstimatorConfig(estimator, queries=64, subset=40, batch_size=24, chunk_size=37)
    in_memory = load_dataset(str(images / "images.npy")).rows().double()
    np.save(images / "scaled.npy", in_memory.numpy())
    sources = [open_rows(images / "images.npy"), open_rows(images / "shards"),
               np.load(images / "scaled.npy", mmap_mode="r")]
    for labels, tried in [(None, sources), (np.arange(230) % 2, sources[:1])]:
        ref = Estimator(in_memory, config, labels=labels, dtype=torch.float64)
        for source in tried:
            est = Estimator(source, config, labels=labels, dtype=torch.float64)
            for sigma in (0.3, 2.0):
                a, b = est.level(sigma, seed=1), ref.level(sigma, seed=1)
                assert a.loss == pytest.approx(b.loss, rel=1e-12)
                assert a.stderr == pytest.approx(b.stderr, rel=1e-9)


def test_class_split_of_out_of_core_rows_stays_lazy(images):
    rows = open_rows(images / "images.npy").reshape(230, -1)
    part = take_rows(rows, np.array([5, 1, 9]))
    assert isinstance(part, IndexedRows) and part.shape == (3, 30)
    assert np.array_equal(part[0:3], rows[np.array([5, 1, 9])])
    assert isinstance(take_rows(torch.zeros(4, 2), np.array([1])), torch.Tensor)


def test_streaming_memory_is_bounded_by_the_chunk(tmp_path):
    n, d, chunk = 20000, 256, 1024  # a 20 MB file read in 1 MB chunks
    np.save(tmp_path / "big.npy", np.random.default_rng(1).standard_normal((n, d), dtype=np.float32))
    rows = open_rows(tmp_path / "big.npy")
    tracemalloc.start()  # numpy buffers are traced: a full read would show up as >= 20 MB
    try:
        est = Estimator(rows, EstimatorConfig(queries=64, batch_size=64, chunk_size=chunk))
        est.level(1.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * chunk * d * 8, f"peak numpy allocation {peak / 1e6:.1f} MB"


def test_bad_out_of_core_input(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="not a .npy file"):
        NpyRows(tmp_path / "bad.npy")
    np.save(tmp_path / "ints.npy", np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="uint8 images or floats"):
        NpyRows(tmp_path / "ints.npy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .npy shards"):
        open_rows(tmp_path / "empty")
    with pytest.raises(ValueError, match="different row shapes"):
        ShardedRows([np.zeros((2, 3)), np.zeros((2, 4))])


def _estimate(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", "--no-progress", "--sigmas", "0.3,1,3", "--queries", "32", *map(str, args)])
    return exit_info.value.code, capsys.readouterr()


def test_cli_out_of_core_equals_in_memory(images, capsys):
    for flag, out in [([], "memory"), (["--out-of-core"], "disk")]:
        code, _ = _estimate(["--data", images / "images.npy", "--out", images / out, *flag], capsys)
        assert code == 0
    a, b = (json.loads((images / o / "optimal_loss.json").read_text()) for o in ("memory", "disk"))
    assert a["fingerprint"] == b["fingerprint"]
    assert np.allclose(a["loss"], b["loss"], rtol=1e-5, atol=1e-9)


def test_cli_out_of_core_rejects_in_memory_options(images, capsys):
    args = ["--data", images / "shards", "--out-of-core", "--flip", "--out", images / "o"]
    code, captured = _estimate(args, capsys)
    assert code == 2 and "--out-of-core" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert not (images / "o").exists()


def test_zero_level_bound_is_the_same_for_rows_on_disk(tmp_path):
    """The bound reads in-memory rows centred once and memmap rows centred per chunk: same numbers."""
    from lossfloor.floor.bound import zero_level_bound
    from lossfloor.floor.matrix import DataMatrix
    x = np.random.default_rng(0).normal(size=(3000, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    on_disk = np.load(tmp_path / "x.npy", mmap_mode="r")
    sources = torch.arange(50)
    a = zero_level_bound(DataMatrix(torch.from_numpy(x)), sources, 0.3)
    b = zero_level_bound(DataMatrix(on_disk), sources, 0.3)
    assert a > 0 and abs(a - b) <= 1e-12 * a
