"""The loss-function study's design: targets, weights, datasets, presets and cell names."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from lossfloor.objective.densities import UniformT
from lossfloor.objective.objective import get_objective
from lossfloor.objective.weights import NELBO

LOSS_TARGETS = ("x0", "eps", "v", "score")
LOSS_WEIGHTS = ("nelbo", "simple")
POINT_DATASETS = ("clusters", "ring", "swiss-roll", "waves")
IMAGE_DATASETS = ("digits", "fashion-mnist")
@dataclass(frozen=True)
class LossesPreset:
    """Budget and evaluation settings of one kind of data (2-D points or images)."""

    model: str  # relu-mlp (2-D, the paper's network) or unet
    width: int | None
    depth: int | None
    epochs: float  # passes over the training set; steps = ceil(epochs * n_train / batch_size)
    batch_size: int
    n_train: int | None  # 2-D: points drawn; images: a random subset (None: all)
    n_test: int | None
    nelbo_points: int
    nelbo_samples: int
    samples: int
    sample_steps: int
    floor_queries: int
    native_steps: int  # steps of the seed's per-target samplers (it used 512 for 2-D, 500 for images)
    lr: float = 1e-3
    warmup: int = 1
    ema: float = 0.0
    grad_clip: float | None = None
    sigma_min: float = 1e-2  # lower end of the NELBO integral, of NELBO training and of sampling
    sigma_max: float = 1e3  # upper end of the NELBO integral (prior term beyond it)
    classifier_steps: int = 0

    def steps(self, n_train: int) -> int:
        return math.ceil(self.epochs * n_train / self.batch_size)


# The paper's 2-D setting: 7 x 512 ReLU MLP, Adam 1e-3, batch 1024, 100 epochs of 80k points, no EMA,
# no clipping, 2,000 samples at 512 steps.  `reduced` is what the committed results could afford here.
POINTS_PRESETS = {
    "full": LossesPreset(model="relu-mlp", width=512, depth=7, epochs=100, batch_size=1024, n_train=80_000,
                         n_test=20_000, nelbo_points=20_000, nelbo_samples=16, samples=2000, sample_steps=512,
                         floor_queries=2048, native_steps=512),
    "reduced": LossesPreset(model="relu-mlp", width=128, depth=4, epochs=6.4, batch_size=512, n_train=80_000,
                            n_test=20_000, nelbo_points=2000, nelbo_samples=8, samples=1000, sample_steps=64,
                            floor_queries=512, native_steps=512),
    "quick": LossesPreset(model="relu-mlp", width=64, depth=3, epochs=16, batch_size=256, n_train=8000,
                          n_test=4000, nelbo_points=1000, nelbo_samples=4, samples=1000, sample_steps=32,
                          floor_queries=128, native_steps=64),
}
# Images: the project's small UNet (properly noise-conditioned), EMA, 3 targets.
_UNET = dict(model="unet", depth=None, grad_clip=1.0, sigma_min=1e-3)
IMAGE_PRESETS = {
    "full": LossesPreset(**_UNET, width=32, epochs=100, batch_size=128, warmup=100, ema=0.999, n_train=None,
                         n_test=None, nelbo_points=10_000, nelbo_samples=8, samples=10_000, sample_steps=64,
                         floor_queries=1024, native_steps=500, classifier_steps=3000),
    "reduced": LossesPreset(**_UNET, width=16, epochs=60, batch_size=128, warmup=100, ema=0.999, n_train=None,
                            n_test=None, nelbo_points=359, nelbo_samples=8, samples=1000, sample_steps=32,
                            floor_queries=256, native_steps=64, classifier_steps=600),
    "quick": LossesPreset(**_UNET, width=8, epochs=8, batch_size=128, warmup=20, ema=0.99, n_train=512,
                          n_test=256, nelbo_points=128, nelbo_samples=2, samples=128, sample_steps=12,
                          floor_queries=64, native_steps=12, classifier_steps=100),
}
# Fashion-MNIST is 40x digits: the image `reduced` budget (60 epochs) would be ~28k steps per model here,
# so its reduced run is a fixed 500 steps (about half an epoch) of the same UNet.
FASHION_PRESETS = {
    "reduced": replace(IMAGE_PRESETS["reduced"], epochs=500 * 64 / 60_000, batch_size=64, warmup=50,
                       ema=0.995, n_test=2000, nelbo_points=1000, samples=500),
}
PRESET_NAMES = tuple(POINTS_PRESETS)


def losses_preset(dataset: str, name: str) -> LossesPreset:
    """The budget of `name` for `dataset`: points, images, or Fashion-MNIST's own where it has one."""
    if dataset == "fashion-mnist" and name in FASHION_PRESETS:
        return FASHION_PRESETS[name]
    return (IMAGE_PRESETS if dataset in IMAGE_DATASETS else POINTS_PRESETS)[name]


def losses_objective(target: str, weight: str, sigma_min: float):
    """The study's objective: cosine VP with t ~ U(0, 1); the NELBO one with the exact VDM weight.

    The NELBO weight diverges as t -> 0 and its integral over t in (0, 1) is infinite for continuous
    data, so NELBO training draws t ~ U(t(sigma_min), 1): the training loss is then exactly the diffusion
    term of the bound that `likelihood.nelbo` evaluates, the same for every target (no clipping).
    """
    obj = get_objective(f"cosine-{target}-{weight}")
    if isinstance(obj.weight, NELBO):
        obj = obj.with_(time_dist=UniformT(float(obj.process.t_of_sigma(torch.tensor(sigma_min))), 1.0))
    return obj


def cell_name(dataset: str, target: str, weight: str, seed: int) -> str:
    return f"{dataset}_{target}_{weight}_seed{seed}"
