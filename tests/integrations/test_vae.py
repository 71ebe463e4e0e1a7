"""`lossfloor encode` with a tiny randomly initialised diffusers AutoencoderKL saved by the test."""

import argparse
import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers",
                                reason="diffusers is not installed: pip install 'lossfloor[diffusers]'")

from lossfloor.data.load import load_dataset  # noqa: E402
from lossfloor.integrations.vae import load_vae, raw_latents  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vae(scaling_factor=0.5, shift_factor=None, seed=0):
    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(in_channels=1, out_channels=1, latent_channels=2,
                                   block_out_channels=(8, 16),
                                   down_block_types=("DownEncoderBlock2D",) * 2,
                                   up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
                                   norm_num_groups=8, sample_size=8, scaling_factor=scaling_factor,
                                   shift_factor=shift_factor).eval()


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    tiny_vae(scaling_factor=0.5, shift_factor=0.1).save_pretrained(folder)
    return folder


def run_cli(args, capsys):
    from lossfloor.app.cli import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def test_encode_writes_scaled_latent_dist(vae_dir, tmp_path, capsys):
    out = tmp_path / "latents.npz"
    code, stdout, err = run_cli(["encode", "--vae", vae_dir, "--data", "digits", "--n", 64, "--out", out,
                                 "--no-progress"], capsys)
    assert code == 0, err
    ds = load_dataset("digits", n=64)
    vae = load_vae(vae_dir)
    with torch.no_grad():
        dist = vae.model.encode(ds.x).latent_dist
    with np.load(out, allow_pickle=False) as f:
        np.testing.assert_allclose(f["mean"], (dist.mean.numpy() - 0.1) * 0.5, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(f["std"], dist.std.numpy() * 0.5, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(f["labels"], ds.labels.numpy())
        assert f["mean"].shape == (64, 2, 4, 4) and f["mean_test"].shape == (359, 2, 4, 4)
        assert float(f["vae_scaling_factor"]) == 0.5 and float(f["vae_shift_factor"]) == 0.1
    latent = load_dataset(str(out))
    assert latent.std is not None and latent.labels is not None
    # an existing file needs --force
    code, _, err = run_cli(["encode", "--vae", vae_dir, "--n", 8, "--out", out, "--no-progress"], capsys)
    assert code == 2 and "--force" in err


def test_normalise_is_edm2_per_channel(vae_dir, tmp_path, capsys):
    out = tmp_path / "norm.npz"
    code, _, err = run_cli(["encode", "--vae", vae_dir, "--n", 128, "--normalise", "--out", out,
                            "--no-progress"], capsys)
    assert code == 0, err
    with np.load(out, allow_pickle=False) as f:
        mean, std = f["mean"].astype(np.float64), f["std"].astype(np.float64)
    per_channel_mean = mean.mean((0, 2, 3))
    per_channel_var = mean.var((0, 2, 3)) + (std**2).mean((0, 2, 3))  # the mixture's variance
    np.testing.assert_allclose(per_channel_mean, 0, atol=1e-5)
    np.testing.assert_allclose(per_channel_var, 0.25, rtol=1e-4)


def test_encode_then_estimate_round_trip(vae_dir, tmp_path, capsys):
    out = tmp_path / "latents.npz"
    assert run_cli(["encode", "--vae", vae_dir, "--n", 64, "--out", out, "--no-progress"], capsys)[0] == 0
    code, stdout, err = run_cli(["estimate", "--data", out, "--sigmas", "0.01,1,100", "--queries", 64,
                                 "--out", tmp_path / "floor", "--no-progress"], capsys)
    assert code == 0, err
    curve = json.loads((tmp_path / "floor" / "optimal_loss.json").read_text())
    with np.load(out) as f:
        s2 = (f["std"].astype(np.float64) ** 2).mean()
    # below sigma ~ s the mixture's floor is ~ sigma^2 (not ~0), far above it ~ the data variance
    assert curve["loss"][0] == pytest.approx(0.01**2, rel=0.05)  # s >> 0.01: sigma^2 s^2/(s^2+sigma^2)
    assert curve["loss"][-1] > s2


def _save_unet(folder):
    torch.manual_seed(0)
    diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                          layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
                          up_block_types=("UpBlock2D",) * 2).save_pretrained(folder)


def _pickled_bin(folder):
    vae = tiny_vae()
    vae.save_pretrained(folder, safe_serialization=False)
    weights = folder / "diffusion_pytorch_model.bin"
    state = torch.load(weights, weights_only=True)
    state["payload"] = argparse.Namespace(run="code")  # only an unsafe torch.load would build this
    torch.save(state, weights)


@pytest.mark.parametrize("case, fragment", [
    ("missing", "not a folder"), ("empty", "no config.json"), ("unet", "not a VAE"),
    ("pickled", "could not load"), ("channels", "shape (1, H, W)"), ("sizes", "differ in size"),
])
def test_bad_inputs_one_line_exit_2_nothing_written(vae_dir, tmp_path, capsys, case, fragment):
    from PIL import Image

    vae, data = vae_dir, "digits"
    if case == "missing":
        vae = tmp_path / "nowhere"
    elif case == "empty":
        vae = tmp_path / "empty"
        vae.mkdir()
    elif case == "unet":
        vae = tmp_path / "unet"
        _save_unet(vae)
    elif case == "pickled":
        vae = tmp_path / "pickled"
        _pickled_bin(vae)
    elif case == "channels":
        data = tmp_path / "rgb.npy"
        np.save(data, np.random.default_rng(0).uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32))
    elif case == "sizes":
        data = tmp_path / "images"
        data.mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / "a.png")
        Image.fromarray(np.zeros((16, 8), np.uint8)).save(data / "b.png")
    out = tmp_path / "out" / "latents.npz"
    code, _, err = run_cli(["encode", "--vae", vae, "--data", data, "--out", out, "--no-progress"], capsys)
    assert code == 2 and fragment in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not out.parent.exists()


def test_raw_latents_refuses_a_model_without_latent_dist(vae_dir):
    vae = load_vae(vae_dir)

    class NoDist(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def encode(self, x):
            return type("Out", (), {"latents": x})()

    vae.model = NoDist()
    from lossfloor.core.errors import InputError

    with pytest.raises(InputError, match="no latent_dist"):
        raw_latents(vae, torch.zeros(2, 1, 8, 8), progress=False)


@pytest.mark.slow
def test_encode_estimate_train_diagnose_end_to_end(vae_dir, tmp_path, capsys):
    out = tmp_path / "latents.npz"
    assert run_cli(["encode", "--vae", vae_dir, "--n", 128, "--out", out, "--no-progress"], capsys)[0] == 0
    code, _, err = run_cli(["train", "--data", out, "--steps", 20, "--width", 16, "--depth", 1,
                            "--no-progress", "--out", tmp_path / "tr"], capsys)
    assert code == 0, err
    code, stdout, err = run_cli(["diagnose", "--checkpoint", tmp_path / "tr", "--levels", 4, "--queries", 64,
                                 "--sigma-min", 0.01, "--no-progress", "--out", tmp_path / "dg"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "dg" / "diagnosis.json").read_text())
    assert report["data"]["mixture"] and report["test"] is not None and not report["floor_violation"]
    low = report["train"][0]  # sigma = 0.01 << s: the mixture's floor is ~ sigma^2, not ~ 0
    assert low["optimal_loss"] == pytest.approx(0.01**2, rel=0.1)
