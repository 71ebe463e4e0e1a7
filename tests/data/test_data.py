"""Datasets: scaling, splits, subsampling, flips, fingerprints, file formats and the 2-D toys."""

import gzip
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from lossfloor.data.dataset import FASHION_DIR, fingerprint
from lossfloor.data.images import read_idx
from lossfloor.data.load import load_dataset
from lossfloor.data.toys import TOYS


def sorted_rows(x) -> np.ndarray:
    """Rows in lexicographic order, to compare datasets as multisets."""
    a = np.asarray(x).reshape(len(x), -1)
    return a[np.lexsort(a.T[::-1])]


def scaled(pixels) -> torch.Tensor:
    """The expected [-1, 1] images: x / 127.5 - 1 in float64, rounded once to float32."""
    return torch.tensor(np.asarray(pixels, dtype=np.float64) / 127.5 - 1, dtype=torch.float32)


# -- digits -----------------------------------------------------------------------------------------


def test_digits_scaling_and_split():
    raw = load_digits()
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    assert (len(train), len(test)) == (1438, 359)
    assert train.shape == (1, 8, 8) and train.x.dtype == torch.float32
    assert train.x.min() == -1 and train.x.max() == 1
    assert train.scaling["formula"] == "x / 8 - 1"
    # The two splits partition the 1,797 images (as a multiset: digits has duplicate images).
    both = torch.cat([train.x, test.x]).numpy()
    assert np.array_equal(sorted_rows(both), sorted_rows(raw.images[:, None] / 8 - 1))
    # Labels travel with their images.
    lookup = {row.tobytes(): label for row, label in zip((raw.images / 8 - 1).astype(np.float32), raw.target,
                                                        strict=True)}
    assert all(lookup[x.numpy()[0].tobytes()] == y for x, y in zip(test.x, test.labels, strict=True))


def test_fingerprint_is_sha256_of_shape_and_float32_bytes():
    ds = load_dataset("digits", n=10)
    expected = hashlib.sha256(repr((10, 1, 8, 8)).encode() + ds.x.numpy().tobytes()).hexdigest()
    assert ds.fingerprint == expected == fingerprint(ds.x)
    assert load_dataset("digits", n=10).fingerprint == ds.fingerprint
    assert load_dataset("digits", n=10, seed=1).fingerprint != ds.fingerprint
    assert fingerprint(ds.x.reshape(10, -1)) != ds.fingerprint  # the shape is part of it


def test_subsample_is_seeded_subset():
    full = load_dataset("digits")
    a, b, c = (load_dataset("digits", n=100, seed=s) for s in (3, 3, 4))
    assert len(a) == 100 and torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    rows = {r.tobytes() for r in full.x.numpy()}
    assert all(r.tobytes() in rows for r in a.x.numpy())
    with pytest.raises(ValueError, match="only 1438"):
        load_dataset("digits", n=5000)


def test_flip_doubles_images_with_mirrors():
    ds = load_dataset("digits", n=20, flip=True)
    assert len(ds) == 40 and ds.flip and ds.describe()["flip"]
    assert torch.equal(ds.x[20:], ds.x[:20].flip(-1))
    assert torch.equal(ds.labels[20:], ds.labels[:20])
    with pytest.raises(ValueError, match="--flip needs images"):
        load_dataset("ring", n=100, flip=True)


def test_unknown_names_and_splits():
    with pytest.raises(FileNotFoundError, match="unknown dataset 'nope'"):
        load_dataset("nope")
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("digits", split="val")
    with pytest.raises(ValueError, match="fashion-mnist only"):
        load_dataset("digits", data_dir="/tmp")


# -- 2-D toys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOYS)
def test_toys_standardised_seeded_and_split_cleanly(name):
    train = load_dataset(name, n=4000, seed=7)
    assert train.x.shape == (4000, 2) and not train.is_image
    assert torch.allclose(train.x.double().mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(train.x.double().std(0, correction=0), torch.ones(2, dtype=torch.float64),
                          atol=1e-5)
    assert torch.equal(load_dataset(name, n=4000, seed=7).x, train.x)
    assert not torch.equal(load_dataset(name, n=4000, seed=8).x, train.x)
    test = load_dataset(name, split="test", n=4000, seed=7)
    assert test.scaling == train.scaling  # standardised with the train draw's statistics
    assert not {r.tobytes() for r in train.x.numpy()} & {r.tobytes() for r in test.x.numpy()}
    # An independent draw of the same distribution: its mean is 0 within sampling error.
    assert test.x.double().mean(0).abs().max() < 5 / np.sqrt(4000)


def raw_points(ds) -> np.ndarray:
    """Undo the standardisation recorded in `scaling`."""
    return ds.x.double().numpy() * np.array(ds.scaling["std"]) + np.array(ds.scaling["mean"])


def test_toy_generators_follow_the_paper():
    n = 20000
    tol = 5 / np.sqrt(n / 4)  # 5 standard errors of a unit-variance mean over one component

    clusters = load_dataset("clusters", n=n)
    pts, lab = raw_points(clusters), clusters.labels.numpy()
    centres = np.array([pts[lab == k].mean(0) for k in range(4)])
    assert np.allclose(np.sort(centres.ravel()), [-5] * 4 + [5] * 4, atol=tol)
    assert np.allclose([pts[lab == k].std(0) for k in range(4)], 1, atol=tol)

    ring = load_dataset("ring", n=n)
    pts, lab = raw_points(ring), ring.labels.numpy()
    radius = np.linalg.norm(pts - np.stack([5.0 * lab, 0 * lab], 1), axis=1)
    assert abs(radius.mean() - 4) < 5 * 0.2 / np.sqrt(n)
    assert abs(radius.std() - 0.2) < 5 * 0.2 / np.sqrt(2 * n)

    waves = load_dataset("waves", n=n)
    pts, lab = raw_points(waves), waves.labels.numpy()
    resid = pts[:, 1] - np.where(lab == 0, 0.6, 0.3) - 0.3 * np.sin(6 * np.pi * pts[:, 0])
    assert abs(resid.mean()) < 5 * 0.03 / np.sqrt(n) and abs(resid.std() - 0.03) < 5 * 0.03 / np.sqrt(2 * n)
    assert pts[:, 0].min() == pytest.approx(0, abs=1e-6) and pts[:, 0].max() == pytest.approx(1, abs=1e-6)

    roll = raw_points(load_dataset("swiss-roll", n=n))
    r = np.linalg.norm(roll, axis=1)  # = t up to the N(0, 0.5^2) noise, t in [1.5 pi, 4.5 pi]
    assert 1.5 * np.pi - 2.5 < r.min() and r.max() < 4.5 * np.pi + 2.5

    gauss = load_dataset("gaussian", n=n)
    assert np.allclose(gauss.scaling["mean"], 0, atol=5 / np.sqrt(n))
    assert np.allclose(gauss.scaling["std"], 1, atol=5 / np.sqrt(2 * n))


# -- arrays and image folders ----------------------------------------------------------------------


def test_npy_uint8_images_get_a_channel_and_scaling(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    np.save(tmp_path / "im.npy", images)
    ds = load_dataset(str(tmp_path / "im.npy"))
    assert ds.shape == (1, 5, 4) and ds.labels is None and ds.is_image
    assert torch.equal(ds.x[:, 0], scaled(images))
    assert ds.scaling["formula"] == "x / 127.5 - 1"


def test_npz_arrays_labels_and_test_split(tmp_path):
    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(8, 3)), rng.normal(size=(4, 3))
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(8) % 2, x_test=xt, labels_test=np.zeros(4, int))
    ds = load_dataset(str(tmp_path / "d.npz"))
    assert torch.equal(ds.x, torch.tensor(x, dtype=torch.float32)) and ds.labels.tolist() == [0, 1] * 4
    assert ds.scaling["kind"] == "none"
    test = load_dataset(str(tmp_path / "d.npz"), split="test")
    assert len(test) == 4 and test.labels.tolist() == [0] * 4
    np.savez(tmp_path / "bad.npz", a=x, b=x)
    with pytest.raises(ValueError, match="no array named 'x'"):
        load_dataset(str(tmp_path / "bad.npz"))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_data_is_rejected(tmp_path, bad):
    x = np.zeros((5, 2))
    x[3, 1] = bad
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError, match="1 data points contain NaN or Inf"):
        load_dataset(str(tmp_path / "x.npy"))


def test_image_folder_with_classes(tmp_path):
    rng = np.random.default_rng(0)
    pixels = {}
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            a = rng.integers(0, 256, (4, 6), dtype=np.uint8)
            Image.fromarray(a, "L").save(tmp_path / cls / f"{i}.png")
            pixels[(cls, i)] = a
    ds = load_dataset(str(tmp_path))
    assert ds.shape == (1, 4, 6) and ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(ds.x[4, 0], scaled(pixels[("dog", 1)]))


def test_image_folder_rgb_and_errors(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "a.png")
    Image.fromarray(rgb[::-1].copy(), "RGB").save(tmp_path / "b.png")
    ds = load_dataset(str(tmp_path))
    assert ds.shape == (3, 5, 5) and ds.labels is None
    assert torch.equal(ds.x[0], scaled(rgb.transpose(2, 0, 1)))
    Image.fromarray(rgb[:4], "RGB").save(tmp_path / "c.png")
    with pytest.raises(ValueError, match="differ in size"):
        load_dataset(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_dataset(str(tmp_path / "empty"))


# -- Fashion-MNIST -----------------------------------------------------------------------------------


def write_idx(path, array: np.ndarray, compress: bool):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    (gzip.open if compress else open)(path, "wb").write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_from_data_dir(tmp_path, compress):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 10, 7)
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, compress)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, split="test")
    assert ds.shape == (1, 28, 28) and ds.labels.tolist() == labels.tolist()
    assert torch.equal(ds.x[:, 0], scaled(images))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path)  # no train files


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "junk")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="holds 3 bytes"):
        read_idx(tmp_path / "short")


@pytest.mark.fashion
def test_debian_fashion_mnist():
    raw = gzip.open(FASHION_DIR / "train-images-idx3-ubyte.gz").read()
    assert hashlib.md5(raw).hexdigest() == "f4a8712d7a061bf5bd6d2ca38dc4d50a"  # Debian's decompressed bytes
    train = load_dataset("fashion-mnist")
    assert train.x.shape == (60000, 1, 28, 28) and train.labels.bincount().tolist() == [6000] * 10
    pixels = np.frombuffer(raw, np.uint8, offset=16).reshape(60000, 1, 28, 28)
    assert torch.equal(train.x, scaled(pixels))
    test = load_dataset("fashion-mnist", split="test")
    assert test.x.shape == (10000, 1, 28, 28) and test.labels.bincount().tolist() == [1000] * 10
