"""Latent .npz files (mean and std or logvar) as Gaussian-mixture datasets, through the API and the CLI."""

import json

import numpy as np
import pytest
import torch

from lossfloor.app.cli import main
from lossfloor.core.errors import InputError
from lossfloor.data.load import load_dataset
from lossfloor.floor.config import EstimatorConfig
from lossfloor.floor.estimator import Estimator


def _latents(tmp_path, name="latents.npz", **arrays):
    rng = np.random.default_rng(0)
    base = {"mean": rng.standard_normal((12, 2, 3, 3)).astype(np.float32),
            "std": rng.uniform(0.05, 0.3, (12, 2, 3, 3)).astype(np.float32)}
    base.update(arrays)
    path = tmp_path / name
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path, base


def test_latent_file_is_a_gaussian_mixture_with_scale_and_shift(tmp_path):
    path, raw = _latents(tmp_path, scale=np.float32(0.5), shift=np.array([1.0, -1.0], np.float32),
                         labels=np.arange(12) % 3)
    ds = load_dataset(str(path))
    shift = np.array([1.0, -1.0])[:, None, None]
    np.testing.assert_allclose(ds.x.numpy(), (raw["mean"] - shift) * 0.5, rtol=1e-6)
    np.testing.assert_allclose(ds.std.numpy(), raw["std"] * 0.5, rtol=1e-6)
    assert ds.scaling["kind"] == "latent"
    assert ds.scaling["scale"] == 0.5 and ds.scaling["shift"] == [1.0, -1.0]
    assert ds.describe()["mixture"] and ds.labels.tolist() == (np.arange(12) % 3).tolist()
    other, _ = _latents(tmp_path, "other.npz", scale=np.float32(0.25),
                        shift=np.array([1.0, -1.0], np.float32), labels=np.arange(12) % 3)
    assert load_dataset(str(other)).fingerprint != ds.fingerprint  # the scaling is in the fingerprint
    sub = load_dataset(str(path), n=5, flip=True)
    assert len(sub) == 10 and torch.equal(sub.std[5:], sub.std[:5].flip(-1))


def test_logvar_and_zero_std(tmp_path):
    path, raw = _latents(tmp_path, std=None, logvar=np.full((12, 2, 3, 3), -2.0, np.float32))
    np.testing.assert_allclose(load_dataset(str(path)).std.numpy(), np.exp(-1.0), rtol=1e-6)
    zero, raw = _latents(tmp_path, "zero.npz", std=np.zeros((12, 2, 3, 3), np.float32))
    ds = load_dataset(str(zero))
    assert ds.std is None and ds.std_rows() is None  # points: the s = 0 case


def test_the_api_estimates_the_mixture_floor(tmp_path):
    path, raw = _latents(tmp_path)
    ds = load_dataset(str(path))
    est = Estimator(ds.rows(), EstimatorConfig(queries=64), std=ds.std_rows())
    points = Estimator(ds.rows(), EstimatorConfig(queries=64))
    small = est.level(0.01)
    assert small.loss > 0.5 * 0.01**2  # below sigma ~ s the floor is about sigma^2, not 0 as for the means
    assert points.level(0.01).loss < 1e-3 * small.loss


def _run(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_cli_estimate_on_latents_records_the_mixture(tmp_path, capsys):
    path, _ = _latents(tmp_path, scale=np.float32(2.0))
    out = tmp_path / "est"
    code, stdout, err = _run(["estimate", "--no-progress", "--sigmas", "0.01,0.1,1,10", "--queries", "16",
                              "--data", path, "--out", out], capsys)
    assert code == 0, err
    doc = json.loads((out / "optimal_loss.json").read_text())
    assert doc["settings"]["mixture"] and doc["scaling"]["scale"] == 2.0
    assert doc["data"]["mixture"] and doc["fingerprint"] == load_dataset(str(path)).fingerprint
    assert doc["loss"][0] > 0.5 * 0.01**2


BAD = {
    "shape": ({"std": np.ones((12, 2, 3, 2), np.float32)}, "shape"),
    "negative": ({"std": -np.ones((12, 2, 3, 3), np.float32)}, "negative"),
    "nan_mean": ({"mean": np.full((12, 2, 3, 3), np.nan, np.float32)}, "NaN"),
    "nan_logvar": ({"std": None, "logvar": np.full((12, 2, 3, 3), np.nan, np.float32)}, "NaN"),
    "both": ({"logvar": np.zeros((12, 2, 3, 3), np.float32)}, "exactly one"),
    "pickled": ({"std": np.array([{"a": 1}] * 12, dtype=object)}, "std"),
    "scale": ({"scale": np.float32(0.0)}, "scale"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_latent_files_get_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    arrays, words = BAD[case]
    path, _ = _latents(tmp_path, **arrays)
    with pytest.raises(InputError, match=words):
        load_dataset(str(path))
    out = tmp_path / "est"
    code, _, err = _run(["estimate", "--no-progress", "--sigmas", "0.1,1", "--queries", "8", "--data", path,
                         "--out", out], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(path) in err
    assert not out.exists() or not any(out.iterdir())


def test_subset_estimators_are_refused_for_latents(tmp_path, capsys):
    path, _ = _latents(tmp_path)
    code, _, err = _run(["estimate", "--no-progress", "--sigmas", "0.1,1", "--queries", "8", "--data", path,
                         "--estimator", "cdol", "--subset", "4", "--out", tmp_path / "e"], capsys)
    assert code == 2 and "subset estimators" in err and len(err.strip().splitlines()) == 1


def test_cli_train_on_latents_and_diagnose_against_the_mixture(tmp_path, capsys):
    rng = np.random.default_rng(1)
    path = tmp_path / "flat.npz"
    np.savez(path, mean=rng.standard_normal((32, 4)).astype(np.float32),
             std=rng.uniform(0.05, 0.2, (32, 4)).astype(np.float32))
    code, _, err = _run(["train", "--data", path, "--steps", "2", "--width", "8", "--depth", "1",
                         "--no-progress", "--out", tmp_path / "tr"], capsys)
    assert code == 0, err
    code, _, err = _run(["estimate", "--data", path, "--sigmas", "0.01,0.1,1,10", "--queries", "32",
                         "--no-progress", "--out", tmp_path / "est"], capsys)
    assert code == 0, err
    curve = json.loads((tmp_path / "est" / "optimal_loss.json").read_text())
    code, _, err = _run(["diagnose", "--checkpoint", tmp_path / "tr", "--curve",
                         tmp_path / "est" / "optimal_loss.json", "--queries", "32", "--no-progress", "--out",
                         tmp_path / "dg"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "dg" / "diagnosis.json").read_text())
    assert report["data"]["mixture"] and [g["optimal_loss"] for g in report["train"]] == curve["loss"]
    # a curve of the means taken as points is other data (its fingerprint): refused in one line
    np.save(tmp_path / "means.npy", np.load(path)["mean"])
    code, _, err = _run(["estimate", "--data", tmp_path / "means.npy", "--sigmas", "0.01,0.1,1,10",
                         "--queries", "32", "--no-progress", "--out", tmp_path / "pts"], capsys)
    assert code == 0, err
    code, _, err = _run(["diagnose", "--checkpoint", tmp_path / "tr", "--curve",
                         tmp_path / "pts" / "optimal_loss.json", "--no-progress", "--out", tmp_path / "dg2"],
                        capsys)
    assert code == 2 and "was computed on" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "dg2").exists() or not any((tmp_path / "dg2").iterdir())
