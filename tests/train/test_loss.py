"""`Objective.loss`, the one training loss: it is the trainer's, bit for bit, for every preset and schedule,
and its default draws are the trainer's (t, then eps, from one generator)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lossfloor.nets.denoiser import Denoiser
from lossfloor.nets.denoiser import x0_loss as denoiser_x0_loss
from lossfloor.nets.networks import ModelConfig
from lossfloor.objective.objective import get_objective, objective_names
from lossfloor.objective.targets import make_target, per_sample, target_error_factor
from lossfloor.train.sampler import ScheduleSampler
from lossfloor.train.schedules import apply_schedule
from lossfloor.train.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[2]
OBJECTIVES = [*objective_names(), "cosine-v-nelbo", "flow-x0-simple", "edm+edm2-learned", "flow+logit-normal",
              "vp+min-snr"]


def objective(name):
    base, _, schedule = name.partition("+")
    return apply_schedule(base, schedule) if schedule else get_objective(base)


def reference_losses(obj, net, x0, t, eps):
    """The trainer's loss as it was written out before `Objective.loss` existed."""
    x0_64, eps_64 = x0.double(), eps.double()
    alpha, sigma_t = per_sample(obj.process.alpha(t), x0_64), per_sample(obj.process.sigma(t), x0_64)
    x_t = alpha * x0_64 + sigma_t * eps_64
    target = make_target(obj.target, obj.process, t, x_t, x0_64, obj.precond).float()
    pred = Denoiser(net, obj).prediction(x_t.float(), t)
    err = (pred - target).pow(2).flatten(1).mean(1)
    weight = obj.target_weight(t).to(device=err.device, dtype=err.dtype)
    factor = target_error_factor(obj.target, obj.process, t, obj.precond)
    x0_loss = err.detach().double() / factor
    sigma = obj.process.ve_sigma(t)
    loss = weight * err
    if hasattr(obj.weight, "augment"):
        loss = obj.weight.augment(sigma, loss)
    return loss, x0_loss


@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_loss_is_the_trainers_loss(name):
    x = 0.5 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    trainer = Trainer(x, objective(name), ModelConfig("mlp", (2,), width=16, depth=1), TrainConfig(steps=1))
    obj, gen = trainer.objective, torch.Generator().manual_seed(4)
    x0 = x[:32]
    t = obj.sample_t(32, gen)
    eps = torch.randn(x0.shape, generator=gen)
    loss, x0_loss = obj.loss(trainer.net, x0, t, eps)
    assert loss.shape == x0_loss.shape == (32,) and not x0_loss.requires_grad and loss.requires_grad
    ref_loss, ref_x0 = reference_losses(obj, trainer.net, x0, t, eps)
    assert torch.equal(loss, ref_loss) and torch.equal(x0_loss, ref_x0)
    trained = trainer.losses(x0, t, eps)
    assert torch.equal(trained[0], loss) and torch.equal(trained[1], x0_loss)
    # Drawn inside: t first, then eps, from the one generator (as the trainer draws them).
    drawn = obj.loss(trainer.net, x0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(drawn[0], loss) and torch.equal(drawn[1], x0_loss)
    # The x0 loss is the denoiser's, up to float32 round-off of the prediction.
    with torch.no_grad():
        direct = denoiser_x0_loss(Denoiser(trainer.net, obj), x0, obj.process.ve_sigma(t), eps)
    big = direct > 1e-6
    torch.testing.assert_close(x0_loss[big], direct[big], rtol=1e-3, atol=0)


def test_the_schedule_sampler_weighs_a_target_error_as_the_objective_does():
    sched = ScheduleSampler("edm", "edm2-learned")
    sigma = sched.sample_sigma(16)
    mse = torch.rand(16, dtype=torch.float64)
    t = sched.t(sigma)
    assert torch.equal(sched.loss(sigma, mse), sched.objective.loss_from_target(t, mse, sigma))
    assert torch.equal(sched.x0_loss(sigma, mse), sched.objective.x0_loss_from_target(t, mse))


@pytest.mark.slow
def test_the_docs_loss_example_runs(tmp_path):
    text = (ROOT / "docs" / "train-diagnose.md").read_text()
    block = re.search(r"<!-- loss-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "docs/train-diagnose.md lacks the Objective.loss example block"
    run = subprocess.run([sys.executable, "-c", block.group(1)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "x0 loss" in run.stdout
