"""The loss-function comparison: targets x0 / eps / v / score x NELBO vs simple weights.

After Kumar, Vaeth & Gregorova (2025), measured with one NELBO estimator and one sampler.  A cell is one
(dataset, target, loss, seed): a trained model, its NELBO, x0 error curve and sample metrics
(``<out>/<dataset>/cells/<cell>.json``).  `losses_report` aggregates the cells into mean ± SE over seeds
and paired NELBO-vs-simple differences.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from lossfloor.core.errors import InputError
from lossfloor.data.load import load_dataset
from lossfloor.evaluate.likelihood import nelbo, rescaled_loss, x0_error_curve
from lossfloor.evaluate.metrics import frechet_distance, point_metrics
from lossfloor.evaluate.sampling import karras_sigmas, sample, seed_native_sample
from lossfloor.floor.config import EstimatorConfig
from lossfloor.nets.networks import ModelConfig
from lossfloor.objective.objective import get_objective
from lossfloor.studies.common import (
    cached_classifier,
    cached_floor,
    check_choice,
    check_seeds,
    run_cells,
    seeded,
    train_run,
)
from lossfloor.studies.losses.design import (
    IMAGE_DATASETS,
    LOSS_TARGETS,
    LOSS_WEIGHTS,
    POINT_DATASETS,
    PRESET_NAMES,
    LossesPreset,
    cell_name,
    losses_objective,
    losses_preset,
)
from lossfloor.studies.losses.report import write_losses_report
from lossfloor.train.trainer import TrainConfig


def _load_losses_data(name: str, preset: LossesPreset, data_dir=None):
    """(train, test) datasets; the 2-D test set is an independent draw with the train standardisation."""

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

    def nelbo_diffusion(curve) -> dict:
        total = curve.total(losses_objective("x0", "nelbo", preset.sigma_min))
        return {"nelbo_diffusion": total.value, "nelbo_diffusion_se": total.stderr}

    config = EstimatorConfig("full", queries=min(preset.floor_queries, len(train)))
    sigmas = np.geomspace(preset.sigma_min, 100.0, 25)
    return cached_floor(out / "floor.json", train, sigmas, config, seed=seed, extra=nelbo_diffusion)


def _train_cell(train, target, weight, seed, preset: LossesPreset, run_dir: Path, progress: bool):

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


def run_losses_study(datasets, targets, weights, seeds, preset_name: str, out, *, data_dir=None,
                     progress: bool = True) -> dict:
    """Train and evaluate every (dataset, target, weight, seed) cell, skipping finished ones; then report."""
    out = Path(out)
    for t in targets:
        check_choice("target", t, LOSS_TARGETS)
    for w in weights:
        check_choice("loss", w, LOSS_WEIGHTS)
    check_choice("preset", preset_name, PRESET_NAMES)
    check_seeds(seeds)
    for d in datasets:
        check_choice("dataset", d, POINT_DATASETS + IMAGE_DATASETS)
    if not datasets or not targets or not weights or not seeds:
        raise InputError("need at least one dataset, target, loss and seed")
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

    return write_losses_report(out)
