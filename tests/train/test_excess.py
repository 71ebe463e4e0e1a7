"""One scalar everywhere: FloorValidator, GapMonitor and the trainer's logs report the same objective-weighted
excess over the floor (floor/excess.py) on identical gaps."""

import csv

import numpy as np
import pytest
import torch

from lossfloor.core.errors import InputError
from lossfloor.evaluate.validation import FloorValidator
from lossfloor.floor.config import EstimatorConfig
from lossfloor.floor.estimator import Estimator
from lossfloor.floor.excess import weighted_excess
from lossfloor.nets.networks import ModelConfig
from lossfloor.objective.objective import get_objective
from lossfloor.train.monitor import GapMonitor
from lossfloor.train.trainer import TrainConfig, Trainer, train

SIGMAS = np.geomspace(0.05, 5.0, 6)
TINY = ModelConfig("mlp", (2,), width=32, depth=1)


@pytest.fixture(scope="module")
def toy():
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 0.5, 0.3, 0.1])
    return x, Estimator(x.double(), EstimatorConfig(queries=300)).curve(SIGMAS, seed=0, progress=False)


@pytest.fixture(scope="module")
def plane():
    x = 0.5 * torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    grid = np.geomspace(0.002, 80, 12)
    return x, Estimator(x.double(), EstimatorConfig(queries=256)).curve(grid, seed=0, progress=False)


@pytest.mark.parametrize("name", ["edm", "vp", "flow"])
def test_gap_monitor_and_the_validator_give_the_same_scalar(toy, name):
    x, curve = toy
    objective = get_objective(name)
    result = FloorValidator(x, curve, objective, points=64, seed=2, same_draw=False)(
        lambda noisy, sigma: 0.8 * noisy / (1 + sigma.reshape(-1, 1) ** 2))
    half = np.sqrt(SIGMAS[1] / SIGMAS[0])  # bins whose geometric centres are the validator's levels
    monitor = GapMonitor(curve, objective, edges=np.r_[SIGMAS / half, SIGMAS[-1] * half])
    for k, s in enumerate(SIGMAS):  # the same per-draw raw losses at the same levels
        monitor.update(np.full(64, s), result.draws[k] + result.floor[k])
    summary = monitor.summary()
    assert summary["excess"] == pytest.approx(result.excess, rel=1e-10, abs=1e-12)
    assert summary["excess_coverage"] == pytest.approx(result.weight_coverage)
    assert np.isfinite(summary["excess_stderr"]) and summary["excess_stderr"] > 0


def test_fewer_than_two_levels_is_nan():
    assert np.isnan(weighted_excess(get_objective("edm"), [1.0], [0.3]).value)


class Recording(Trainer):
    """A trainer that also feeds every sample's (sigma, x0 loss) to a GapMonitor."""

    def losses(self, x0, t, eps):
        loss, x0_loss = super().losses(x0, t, eps)
        self.monitor.update(self.objective.process.ve_sigma(t), x0_loss)
        return loss, x0_loss


def test_the_trainer_logs_the_gap_monitors_scalar(plane, tmp_path):
    x, curve = plane
    trainer = Recording(x, "edm", TINY, TrainConfig(steps=20, batch_size=64, log_every=20), out=tmp_path,
                        curve=curve)
    trainer.monitor = GapMonitor(curve, trainer.objective)
    trainer.run(progress=False)
    summary = trainer.monitor.summary()
    assert trainer.excess.value == pytest.approx(summary["excess"], rel=1e-9)
    with open(tmp_path / "log.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["excess"]) == pytest.approx(summary["excess"], rel=1e-9)
    with open(tmp_path / "binned.csv") as f:
        bins = [r for r in csv.DictReader(f) if int(r["count"])]
    sigma, gap = [float(r["sigma"]) for r in bins], [float(r["gap"]) for r in bins]
    again = weighted_excess(trainer.objective, sigma, gap)
    assert again.value == pytest.approx(float(row["excess"]), rel=1e-9)


def test_a_curve_of_other_data_is_refused(toy, plane):
    with pytest.raises(InputError, match="dimension 4"):
        Trainer(plane[0], "edm", TINY, curve=toy[1])


def test_resume_with_a_curve_is_bit_for_bit(plane, tmp_path):
    x, curve = plane
    config = TrainConfig(steps=12, batch_size=32, log_every=3, checkpoint_every=6, warmup=4)
    train(x, "edm", TINY, config, out=tmp_path / "a", progress=False, curve=curve)
    train(x, "edm", TINY, TrainConfig(**{**config.__dict__, "steps": 6}), out=tmp_path / "b", progress=False,
          curve=curve)
    train(x, "edm", TINY, config, out=tmp_path / "b", resume=True, progress=False, curve=curve)
    for name in ("log.csv", "binned.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    assert "excess" in (tmp_path / "a" / "log.csv").read_text().splitlines()[0]
