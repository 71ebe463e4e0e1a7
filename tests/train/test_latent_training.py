"""Training on stochastic latents: a fresh z = mean + std eps every step (as EDM2 trains)."""

import pytest
import torch

from lossfloor.core.errors import InputError
from lossfloor.nets.networks import ModelConfig
from lossfloor.train.trainer import TrainConfig, Trainer

TINY = ModelConfig("mlp", (2,), width=8, depth=1)


def _x0_of_steps(std, steps=2):
    """The clean batches the trainer feeds its objective over `steps` steps."""
    seen = []
    trainer = Trainer(torch.zeros(4, 2) + torch.arange(4.0)[:, None], "edm", TINY,
                      TrainConfig(steps=steps, batch_size=8), std=std)
    trainer.losses = lambda x0, t, eps: (seen.append(x0.clone()) or Trainer.losses(trainer, x0, t, eps))
    for _ in range(steps):
        trainer.train_step()
    return torch.cat(seen)


def test_latents_are_sampled_each_step():
    points = _x0_of_steps(None)
    assert set(points[:, 0].tolist()) <= {0.0, 1.0, 2.0, 3.0}  # the means themselves
    sampled = _x0_of_steps(torch.full((4, 2), 0.1))
    offsets = sampled - sampled.round()
    assert offsets.abs().max() > 0 and 0.03 < offsets.std().item() < 0.3  # z = mean + 0.1 eps
    assert len(set(sampled[:, 0].tolist())) == len(sampled)  # a fresh draw each time


def test_std_must_match_the_data():
    with pytest.raises(InputError, match="std of shape"):
        Trainer(torch.zeros(4, 2), "edm", TINY, TrainConfig(steps=1), std=torch.ones(3, 2))
