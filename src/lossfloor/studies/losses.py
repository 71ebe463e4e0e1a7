"""The loss-function comparison: targets x0 / eps / v / score x NELBO vs simple weights.

After Kumar, Vaeth & Gregorova (2025), measured with one NELBO estimator and one sampler.  A cell is one
(dataset, target, loss, seed): a trained model, its NELBO, x0 error curve and sample metrics
(``<out>/<dataset>/cells/<cell>.json``).  `losses_report` aggregates the cells into mean ± SE over seeds
and paired NELBO-vs-simple differences.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..formulation import UniformT, get_objective
from .common import (
    cached_classifier,
    cached_floor,
    check_choice,
    run_cells,
    seeded,
    train_run,
)

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
    if weight == "nelbo":
        obj = obj.with_(time_dist=UniformT(float(obj.process.t_of_sigma(torch.tensor(sigma_min))), 1.0))
    return obj


def _load_losses_data(name: str, preset: LossesPreset, data_dir=None):
    """(train, test) datasets; the 2-D test set is an independent draw with the train standardisation."""
    from ..data import load_dataset

    if name in POINT_DATASETS:
        train = load_dataset(name, n=preset.n_train)
        test = load_dataset(name, split="test", n=preset.n_train)  # same n: same standardisation
        labels = None if test.labels is None else test.labels[: preset.n_test]
        return train, replace(test, x=test.x[: preset.n_test], labels=labels)
    kw = {"data_dir": data_dir} if name == "fashion-mnist" else {}
    train = load_dataset(name, n=preset.n_train, **kw)
    test = load_dataset(name, split="test", **kw)
    if preset.n_test is not None and preset.n_test < len(test):
        test = load_dataset(name, split="test", n=preset.n_test, **kw)
    return train, test


def _floor(train, preset: LossesPreset, out: Path, seed: int = 0):
    """J*(sigma) of the training set and the optimal NELBO diffusion term on [sigma_min, inf) (cached)."""
    from ..estimators import EstimatorConfig

    def nelbo_diffusion(curve) -> dict:
        total = curve.total(losses_objective("x0", "nelbo", preset.sigma_min))
        return {"nelbo_diffusion": total.value, "nelbo_diffusion_se": total.stderr}

    config = EstimatorConfig("full", queries=min(preset.floor_queries, len(train)))
    sigmas = np.geomspace(preset.sigma_min, 100.0, 25)
    return cached_floor(out / "floor.json", train, sigmas, config, seed=seed, extra=nelbo_diffusion)


def _train_cell(train, target, weight, seed, preset: LossesPreset, run_dir: Path, progress: bool):
    from ..models import ModelConfig
    from ..training import TrainConfig

    obj = losses_objective(target, weight, preset.sigma_min)
    steps = preset.steps(len(train))
    config = TrainConfig(steps=steps, batch_size=preset.batch_size, lr=preset.lr, warmup=preset.warmup,
                         ema=preset.ema, grad_clip=preset.grad_clip, seed=seed, log_every=max(1, steps // 20),
                         checkpoint_every=max(1, steps // 4))
    model = ModelConfig(preset.model, train.shape, preset.width, preset.depth)
    start = time.time()
    trainer = train_run(train, obj, model, config, run_dir, progress=progress)
    return trainer.denoiser(), obj, steps, time.time() - start


def _evaluate_cell(denoiser, obj, train, test, preset: LossesPreset, seed: int, classifier=None) -> dict:
    """NELBO (bits/dim), rescaled loss, x0 error curve, the shared sampler's samples and their metrics."""
    from ..likelihood import nelbo, rescaled_loss, x0_error_curve
    from ..metrics import frechet_distance, point_metrics
    from ..sampling import karras_sigmas, sample, seed_native_sample

    test_x = test.x[: preset.nelbo_points]
    step = float(test.scaling["scale"]) if test.is_image else None  # the spacing of the data's levels
    bound = nelbo(denoiser, test_x, sigma_min=preset.sigma_min, sigma_max=preset.sigma_max,
                  samples=preset.nelbo_samples, quantization_step=step, seed=seed)
    on_train = nelbo(denoiser, train.x[: preset.nelbo_points], sigma_min=preset.sigma_min,
                     sigma_max=preset.sigma_max, samples=preset.nelbo_samples, seed=seed)
    rescaled = rescaled_loss(denoiser, test_x, get_objective("cosine-x0-simple"), seed=seed)
    errors = x0_error_curve(denoiser, test_x, np.geomspace(preset.sigma_min, 100.0, 21), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    sigmas = karras_sigmas(preset.sample_steps, sigma_min=preset.sigma_min, sigma_max=80.0)
    x = sample(denoiser, (preset.samples, *train.shape), sigmas, generator=gen)
    result = {"nelbo": asdict(bound), "train_nelbo_diffusion": on_train.diffusion,
              "rescaled_loss": rescaled.value, "rescaled_loss_se": rescaled.stderr,
              "x0_error_curve": asdict(errors)}
    native = seed_native_sample(denoiser, obj.target, (preset.samples, *train.shape), preset.native_steps,
                                torch.Generator().manual_seed(seed), clamp=train.is_image)
    for prefix, xs in (("", x), ("native_", native)):
        result[f"{prefix}nonfinite_samples"] = int((~torch.isfinite(xs)).reshape(len(xs), -1).any(1).sum())
        xs = torch.nan_to_num(xs, nan=0.0, posinf=1e6, neginf=-1e6)
        if classifier is None:
            result[f"{prefix}metrics"] = point_metrics(xs, test.x, seed=seed).to_dict()
            result[f"{prefix}samples"] = xs[:500].tolist()
        else:
            fake = xs.clamp(-1, 1)  # the seed clamps its image samples too
            result[f"{prefix}metrics"] = {"classifier_fd": frechet_distance(classifier, test.x, fake)}
            result[f"{prefix}samples"] = fake[:64].reshape(64, -1).tolist()
    return result


def cell_name(dataset: str, target: str, weight: str, seed: int) -> str:
    return f"{dataset}_{target}_{weight}_seed{seed}"


def run_losses_study(datasets, targets, weights, seeds, preset_name: str, out, *, data_dir=None,
                     progress: bool = True) -> dict:
    """Train and evaluate every (dataset, target, weight, seed) cell, skipping finished ones; then report."""
    out = Path(out)
    for t in targets:
        check_choice("target", t, LOSS_TARGETS)
    for w in weights:
        check_choice("loss", w, LOSS_WEIGHTS)
    check_choice("preset", preset_name, PRESET_NAMES)
    for d in datasets:
        check_choice("dataset", d, POINT_DATASETS + IMAGE_DATASETS)
    if not datasets or not targets or not weights or not seeds:
        raise ValueError("need at least one dataset, target, loss and seed")
    presets = {d: losses_preset(d, preset_name) for d in datasets}
    data = {d: _load_losses_data(d, presets[d], data_dir) for d in datasets}  # fail before writing anything
    for d in datasets:
        preset, (train, test) = presets[d], data[d]
        data_out = out / d
        (data_out / "cells").mkdir(parents=True, exist_ok=True)
        classifier, accuracy = (None, None)
        if train.is_image:
            classifier, accuracy = cached_classifier(data_out / "classifier.pt", train, test,
                                                     preset.classifier_steps)

        def compute(cell, d=d, preset=preset, train=train, test=test, classifier=classifier,
                    accuracy=accuracy, data_out=data_out) -> dict:
            _, t, w, s = cell
            _floor(train, preset, data_out)  # J* before the first new cell, as the report needs it
            with seeded(s):
                den, obj, steps, seconds = _train_cell(train, t, w, s, preset,
                                                       data_out / "runs" / cell_name(*cell), progress=False)
                result = _evaluate_cell(den, obj, train, test, preset, s, classifier)
            result.update(dataset=d, target=t, loss=w, seed=s, preset=preset_name, objective=obj.name,
                          time_distribution=repr(obj.time_dist), steps=steps, train_seconds=seconds,
                          settings=asdict(preset), n_train=len(train), n_test=len(test),
                          train_fingerprint=train.fingerprint, classifier_accuracy=accuracy)
            return result

        cells = [(d, t, w, s) for t in targets for w in weights for s in seeds]
        run_cells(cells, lambda c, data_out=data_out: data_out / "cells" / f"{cell_name(*c)}.json", compute,
                  progress=progress, desc=f"losses study: {d}", name_of=lambda c: cell_name(*c))
    from .losses_report import write_losses_report

    return write_losses_report(out)
