"""Models, the objective-driven trainer, checkpoints, exact resume, the binned logger and the sampler."""

import csv
import math

import numpy as np
import pytest
import torch

from lossfloor.evaluate.sampling import karras_sigmas, sample
from lossfloor.nets.denoiser import Denoiser, per_sample_x0_loss
from lossfloor.nets.networks import ModelConfig, build_model, parameter_count
from lossfloor.objective.objective import get_objective, objective_names
from lossfloor.objective.targets import x0_from_prediction
from lossfloor.train.checkpoint import load_checkpoint
from lossfloor.train.monitor import BinnedLoss
from lossfloor.train.trainer import TrainConfig, Trainer, train

TINY = ModelConfig("mlp", (2,), width=32, depth=1)


def points(n=256, seed=0) -> torch.Tensor:
    return 0.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


# -- the binned logger -------------------------------------------------------------------------


def test_binned_loss_matches_a_hand_computation():
    bins = BinnedLoss([0.1, 1.0, 10.0])
    bins.update(torch.tensor([0.05, 0.1, 0.5, 0.99, 1.0, 3.0, 10.0, 20.0]),
                torch.tensor([9.0, 1.0, 2.0, 6.0, 4.0, 8.0, 7.0, 5.0]))
    # [0.1, 1): 1, 2, 6; [1, 10): 4, 8; 0.05, 10 and 20 fall outside.
    assert bins.count.tolist() == [3, 2] and bins.outside == 3
    assert bins.mean() == pytest.approx([3.0, 6.0])
    assert bins.stderr() == pytest.approx([math.sqrt(7 / 3), 2.0])  # sample var 7 and 8
    rows = bins.rows()
    assert rows[1]["sigma"] == pytest.approx(math.sqrt(10.0)) and rows[1]["count"] == 2
    copy = BinnedLoss([1.0, 2.0])
    copy.load_state_dict(bins.state_dict())
    assert copy.rows() == rows
    bins.reset()
    assert bins.count.sum() == 0 and np.isnan(bins.mean()).all()


def test_binned_loss_rejects_bad_edges_and_shapes():
    with pytest.raises(ValueError, match="increasing"):
        BinnedLoss([1.0, 1.0])
    with pytest.raises(ValueError, match="noise levels"):
        BinnedLoss().update(torch.ones(3), torch.ones(2))


# -- models and the denoiser -------------------------------------------------------------------


@pytest.mark.parametrize("kind,shape", [("mlp", (2,)), ("relu-mlp", (3,)), ("unet", (1, 8, 8)),
                                        ("unet", (1, 28, 28))])
def test_models_keep_the_data_shape(kind, shape):
    net = build_model(ModelConfig(kind, shape, width=16 if kind == "unet" else 32, depth=2))
    assert parameter_count(net) > 0
    x = torch.randn(3, *shape)
    assert net(x, torch.tensor([-1.0, 0.0, 1.0])).shape == x.shape


def test_unet_needs_images():
    with pytest.raises(ValueError, match="images"):
        build_model(ModelConfig("unet", (5,)))
    with pytest.raises(ValueError, match="unknown model"):
        ModelConfig("transformer", (2,))


@pytest.mark.parametrize("name", objective_names())
def test_trainer_losses_are_the_x0_loss_times_lambda(name):
    """The logged x0 loss is ||x0_hat - x0||^2 / D of the denoiser; the objective loss is lambda times it."""
    obj = get_objective(name)
    trainer = Trainer(points(8), obj, TINY)
    gen = torch.Generator().manual_seed(1)
    x0 = points(8, seed=2)
    t = obj.sample_t(8, gen)
    eps = torch.randn(8, 2, generator=gen)
    weighted, x0_loss = trainer.losses(x0, t, eps)
    alpha, sigma_t = obj.process.alpha(t)[:, None].float(), obj.process.sigma(t)[:, None].float()
    x_t = alpha * x0 + sigma_t * eps
    with torch.no_grad():
        direct = per_sample_x0_loss(Denoiser(trainer.net, obj).x0(x_t, t), x0).double()
    assert x0_loss.numpy() == pytest.approx(direct.numpy(), rel=2e-3, abs=1e-7)
    lam = obj.x0_weight(obj.process.ve_sigma(t))
    assert weighted.detach().double().numpy() == pytest.approx((lam * x0_loss).numpy(), rel=1e-5)


@pytest.mark.parametrize("name", ["edm", "vp", "flow", "ddpm"])
def test_denoiser_ve_coordinates_match_process_coordinates(name):
    obj = get_objective(name)
    den = Denoiser(build_model(TINY), obj)
    sigma = torch.tensor([0.05, 0.7, 3.0], dtype=torch.float64)
    t = obj.process.t_of_sigma(sigma)
    x_tilde = torch.randn(3, 2)
    x_t = obj.process.alpha(t)[:, None].float() * x_tilde
    with torch.no_grad():
        assert torch.allclose(den(x_tilde, sigma), den.x0(x_t, t), rtol=1e-4, atol=1e-5)
        pred = den.prediction(x_t, t)
        expected = x0_from_prediction(obj.target, obj.process, t, x_t, pred, obj.precond)
        assert torch.allclose(den.x0(x_t, t), expected)


# -- checkpoints and exact resume --------------------------------------------------------------


def test_exact_resume_is_bit_for_bit(tmp_path):
    data = points()
    config = TrainConfig(steps=12, batch_size=32, log_every=3, checkpoint_every=6, warmup=4)
    straight = train(data, "edm", TINY, config, out=tmp_path / "a", progress=False)
    half = TrainConfig(**{**config.__dict__, "steps": 6})
    train(data, "edm", TINY, half, out=tmp_path / "b", progress=False)
    resumed = train(data, "edm", TINY, config, out=tmp_path / "b", resume=True, progress=False)
    assert resumed.step == straight.step == 12
    for a, b in zip(straight.state_dict()["net"].values(), resumed.state_dict()["net"].values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.parameters(), resumed.ema.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())
    for name in ("log.csv", "binned.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_resume_drops_log_rows_written_after_the_checkpoint(tmp_path):
    data = points()
    config = TrainConfig(steps=6, batch_size=16, log_every=2, checkpoint_every=4)
    trainer = Trainer(data, "vp", TINY, config, out=tmp_path)
    trainer.run(progress=False)
    ckpt = trainer.state_dict()
    ckpt["step"] = 4  # pretend the run died after logging step 6 but before its checkpoint
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    straight = (tmp_path / "log.csv").read_bytes()
    fresh = Trainer(data, "vp", TINY, config, out=tmp_path)
    fresh.load_state(load_checkpoint(tmp_path))
    assert (tmp_path / "log.csv").read_bytes() == straight  # loading writes nothing
    fresh.run(progress=False)  # drops the row of step 6 before training on from "step 4"
    with open(tmp_path / "log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [2, 4, 6]  # not [2, 4, 6, 6]


def test_checkpoint_round_trip(tmp_path):
    trainer = train(points(), "flow", TINY, TrainConfig(steps=4, batch_size=16), out=tmp_path,
                    data_info={"name": "toy", "fingerprint": "abc"}, progress=False)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (ckpt.step, ckpt.objective_name, ckpt.model, ckpt.data["fingerprint"]) == (4, "flow", TINY, "abc")
    assert ckpt.train["batch_size"] == 16 and ckpt.state["parameters"] == parameter_count(trainer.net)
    x, sigma = torch.randn(5, 2), torch.full((5,), 0.3, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(ckpt.denoiser()(x, sigma), trainer.denoiser()(x, sigma))
        assert torch.equal(ckpt.denoiser(ema=False)(x, sigma), trainer.denoiser(ema=False)(x, sigma))


def test_damaged_checkpoints_are_clear_errors(tmp_path):
    train(points(), "edm", TINY, TrainConfig(steps=2, batch_size=8), out=tmp_path, progress=False)
    good = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a lossfloor checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_train_refuses_to_clobber_and_checks_resume(tmp_path):
    data = points()
    train(data, "edm", TINY, TrainConfig(steps=2, batch_size=8), out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="already holds a run"):
        train(data, "edm", TINY, TrainConfig(steps=2, batch_size=8), out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="objective"):
        train(data, "vp", TINY, TrainConfig(steps=4, batch_size=8), out=tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="shape"):
        Trainer(torch.zeros(4, 3), "edm", TINY)


@pytest.mark.slow
def test_training_reaches_the_gaussian_optimum():
    """On Gaussian data N(0, s^2 I) the optimal x0 loss is s^2 sigma^2 / (s^2 + sigma^2) per dimension."""
    s, sigma, n = 0.5, 0.5, 4096
    data = s * torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    trainer = train(data, "edm", ModelConfig("mlp", (2,), width=64, depth=2),
                    TrainConfig(steps=200, batch_size=256, lr=3e-3, ema=0.99), progress=False)
    gen = torch.Generator().manual_seed(5)
    x0 = s * torch.randn(20000, 2, generator=gen)
    with torch.no_grad():
        noisy = x0 + sigma * torch.randn(20000, 2, generator=gen)
        loss = per_sample_x0_loss(trainer.denoiser()(noisy, sigma), x0)
    optimum = s**2 * sigma**2 / (s**2 + sigma**2)
    se = loss.std().item() / math.sqrt(len(loss))
    assert optimum - 4 * se < loss.mean().item() < 1.05 * optimum + 4 * se


# -- the sampler -------------------------------------------------------------------------------


def test_karras_sigmas():
    sig = karras_sigmas(10, 0.002, 80.0)
    assert len(sig) == 11 and sig[-1] == 0
    assert sig[0].item() == pytest.approx(80.0) and sig[-2].item() == pytest.approx(0.002)
    assert torch.all(sig[:-2] > sig[1:-1])
    with pytest.raises(ValueError):
        karras_sigmas(1)


@pytest.mark.parametrize("method,steps", [("heun", 128), ("euler_maruyama", 1024)])
def test_samplers_recover_a_gaussian(method, steps):
    """With the exact denoiser of N(0, s^2 I), both samplers return variance s^2 (within 4 SE + 1%: the
    discretisation bias at these step counts is 0.2% for Heun and about 0.5% for Euler-Maruyama)."""
    s, n = 0.5, 20000
    exact = lambda x, sigma: x * s**2 / (s**2 + float(sigma) ** 2)  # noqa: E731
    x = sample(exact, (n, 2), karras_sigmas(steps, 0.002, 80.0), method=method,
               generator=torch.Generator().manual_seed(0))
    var = x.double().var(0)
    se = s**2 * math.sqrt(2 / (n - 1))
    assert torch.all((var - s**2).abs() < 4 * se + 0.01 * s**2), var
