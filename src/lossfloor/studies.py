"""The reproducible studies behind the README's figures."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .curve import OptimalLossCurve, atomic_write_text
from .formulation import UniformT, get_objective

# ============================================================================================
# The loss-function comparison (issue 4): targets x0 / eps / v / score x NELBO vs simple weights,
# after Kumar, Vaeth & Gregorova (2025), measured with one NELBO estimator and one sampler.
# ============================================================================================

LOSS_TARGETS = ("x0", "eps", "v", "score")
LOSS_WEIGHTS = ("nelbo", "simple")
POINT_DATASETS = ("clusters", "ring", "swiss-roll", "waves")
IMAGE_DATASETS = ("digits", "fashion-mnist")
SEED_2D_TABLE = {  # the seed paper's 2-D table (NELBO column: its clipped training loss, not a bound)
    ("clusters", "x0"): (0.6777, 0.1754, 0.5746, 0.4754, 0.4300, 0.2715),
    ("clusters", "eps"): (2.3636, 0.0364, 0.0706, 0.3522, 0.0634, 0.1430),
    ("clusters", "v"): (2.5396, 0.0307, 0.0409, 0.8264, 0.0389, 0.0363),
    ("clusters", "score"): (0.7657, 0.2279, 0.1498, 2.6934, 0.2688, 0.1633),
    ("ring", "x0"): (0.8785, 0.2744, 0.3807, 0.4932, 0.2807, 0.3974),
    ("ring", "eps"): (2.5700, 0.0914, 0.1107, 0.4266, 0.0983, 0.0366),
    ("ring", "v"): (2.5452, 0.0459, 0.0718, 0.9227, 0.0453, 0.0088),
    ("ring", "score"): (0.9577, 0.2254, 0.1563, 3.0981, 0.2220, 0.1637),
    ("swiss-roll", "x0"): (0.8640, 0.1133, 0.2645, 0.4934, 0.5256, 0.6875),
    ("swiss-roll", "eps"): (2.5324, 0.0689, 0.0941, 0.4261, 0.0857, 0.0824),
    ("swiss-roll", "v"): (2.4861, 0.0418, 0.0598, 0.9171, 0.0427, 0.0269),
    ("swiss-roll", "score"): (0.9493, 0.1266, 0.1972, 3.0274, 0.0893, 0.1227),
    ("waves", "x0"): (0.9104, 0.1593, 0.5559, 0.4939, 0.1869, 0.6911),
    ("waves", "eps"): (2.6805, 0.0405, 0.0757, 0.4500, 0.0748, 0.0778),
    ("waves", "v"): (2.6873, 0.0447, 0.0738, 0.9411, 0.0131, 0.0271),
    ("waves", "score"): (1.0210, 0.0353, 0.1369, 3.4165, 0.0178, 0.1676),
}


@dataclass(frozen=True)
class LossesPreset:
    """Budget and evaluation settings of one kind of data (2-D points or images)."""

    model: str  # relu-mlp (2-D, the paper's network) or unet
    width: int | None
    depth: int | None
    epochs: float  # passes over the training set; steps = ceil(epochs * n_train / batch_size)
    batch_size: int
    lr: float
    warmup: int
    ema: float
    grad_clip: float | None
    n_train: int | None  # 2-D: points drawn; images: a random subset (None: all)
    n_test: int | None
    sigma_min: float  # lower end of the NELBO integral, of NELBO training and of sampling
    sigma_max: float  # upper end of the NELBO integral (prior term beyond it)
    nelbo_points: int
    nelbo_samples: int
    samples: int
    sample_steps: int
    floor_queries: int
    native_steps: int  # steps of the seed's per-target samplers (it used 512 for 2-D, 500 for images)
    classifier_steps: int = 0

    def steps(self, n_train: int) -> int:
        return math.ceil(self.epochs * n_train / self.batch_size)


# The paper's 2-D setting: 7 x 512 ReLU MLP, Adam 1e-3, batch 1024, 100 epochs of 80k points, no EMA,
# no clipping, 2,000 samples at 512 steps.  `reduced` is what the committed results could afford here.
POINTS_PRESETS = {
    "full": LossesPreset("relu-mlp", 512, 7, 100, 1024, 1e-3, 1, 0.0, None, 80_000, 20_000, 1e-2, 1e3,
                         20_000, 16, 2000, 512, 2048, 512),
    "reduced": LossesPreset("relu-mlp", 128, 4, 6.4, 512, 1e-3, 1, 0.0, None, 80_000, 20_000, 1e-2, 1e3,
                            2000, 8, 1000, 64, 512, 512),
    "quick": LossesPreset("relu-mlp", 64, 3, 16, 256, 1e-3, 1, 0.0, None, 8000, 4000, 1e-2, 1e3,
                          1000, 4, 1000, 32, 128, 64),
}
# Images: the project's small UNet (properly noise-conditioned), EMA, 3 targets.
IMAGE_PRESETS = {
    "full": LossesPreset("unet", 32, None, 100, 128, 1e-3, 100, 0.999, 1.0, None, None, 1e-3, 1e3,
                         10_000, 8, 10_000, 64, 1024, 500, 3000),
    "reduced": LossesPreset("unet", 16, None, 60, 128, 1e-3, 100, 0.999, 1.0, None, None, 1e-3, 1e3,
                            359, 8, 1000, 32, 256, 64, 600),
    "quick": LossesPreset("unet", 8, None, 8, 128, 1e-3, 20, 0.99, 1.0, 512, 256, 1e-3, 1e3,
                          128, 2, 128, 12, 64, 12, 100),
}
# Fashion-MNIST is 40x digits: the image `reduced` budget (60 epochs) would be ~28k steps per model here,
# so its reduced run is a fixed 500 steps (about half an epoch) of the same UNet.
FASHION_PRESETS = {
    "reduced": LossesPreset("unet", 16, None, 500 * 64 / 60_000, 64, 1e-3, 50, 0.995, 1.0, None, 2000,
                            1e-3, 1e3, 1000, 8, 500, 32, 256, 64, 600),
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
    from .data import load_dataset

    if name in POINT_DATASETS:
        train = load_dataset(name, n=preset.n_train)
        test = load_dataset(name, split="test", n=preset.n_train)  # same n: same standardisation
        labels = None if test.labels is None else test.labels[: preset.n_test]
        return train, replace(test, x=test.x[: preset.n_test], labels=labels)
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown dataset {name!r} for the losses study; choose from "
                         f"{', '.join(POINT_DATASETS + IMAGE_DATASETS)}")
    kw = {"data_dir": data_dir} if name == "fashion-mnist" else {}
    train = load_dataset(name, n=preset.n_train, **kw)
    test = load_dataset(name, split="test", **kw)
    if preset.n_test is not None and preset.n_test < len(test):
        test = load_dataset(name, split="test", n=preset.n_test, **kw)
    return train, test


def _quantization_step(dataset) -> float | None:
    """The spacing of the data's levels (images), or None for continuous data."""
    return float(dataset.scaling["scale"]) if dataset.is_image else None


def _floor(train, preset: LossesPreset, out: Path, seed: int = 0) -> dict:
    """J*(sigma) of the training set and the optimal NELBO diffusion term on [sigma_min, inf) (cached)."""
    from .estimators import Estimator, EstimatorConfig

    path = out / "floor.json"
    if path.exists():
        return json.loads(path.read_text())
    sigmas = np.geomspace(preset.sigma_min, 100.0, 25)
    est = Estimator(train.rows(), EstimatorConfig("full", queries=min(preset.floor_queries, len(train))))
    curve = est.curve(sigmas, seed=seed)
    total = curve.total(losses_objective("x0", "nelbo", preset.sigma_min))
    result = {"curve": curve.to_dict(), "nelbo_diffusion": total.value, "nelbo_diffusion_se": total.stderr,
              "fingerprint": train.fingerprint}
    atomic_write_text(path, json.dumps(result, indent=1))
    return result


def _classifier(train, test, preset: LossesPreset, out: Path):
    """The Fréchet feature classifier, trained once per dataset and cached in the output folder."""
    from .metrics import FeatureClassifier, classifier_accuracy, train_classifier

    path = out / "classifier.pt"
    if path.exists():
        state = torch.load(path, weights_only=True)
        net = FeatureClassifier(train.shape, int(state["classes"]))
        net.load_state_dict(state["net"])
        return net.eval().requires_grad_(False), float(state["accuracy"])
    net = train_classifier(train.x, train.labels, steps=preset.classifier_steps, seed=0)
    acc = classifier_accuracy(net, test.x, test.labels)
    buf = io.BytesIO()
    torch.save({"net": net.state_dict(), "classes": net.classes, "accuracy": acc}, buf)
    from .curve import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())
    return net, acc


def _train_cell(train, target, weight, seed, preset: LossesPreset, run_dir: Path, progress: bool):
    from .models import ModelConfig
    from .training import TrainConfig
    from .training import train as run_training

    obj = losses_objective(target, weight, preset.sigma_min)
    steps = preset.steps(len(train))
    config = TrainConfig(steps=steps, batch_size=preset.batch_size, lr=preset.lr, warmup=preset.warmup,
                         ema=preset.ema, grad_clip=preset.grad_clip, seed=seed, log_every=max(1, steps // 20),
                         checkpoint_every=max(1, steps // 4))
    model = ModelConfig(preset.model, train.shape, preset.width, preset.depth)
    start = time.time()
    trainer = run_training(train.x, obj, model, config, out=run_dir, resume=True, progress=progress,
                           data_info=train.describe())
    return trainer.denoiser(), obj, steps, time.time() - start


@torch.no_grad()
def seed_native_sample(denoiser, target: str, shape, steps: int, generator: torch.Generator, *,
                       clamp: bool = False) -> torch.Tensor:
    """The seed paper's per-target samplers, reproduced for comparison (its sampling.py, cosine process).

    On the grid t = linspace(1 - 1e-4, 1e-4, steps + 1): x0 and eps use the ancestral (DDPM, eta = 1)
    step z_s = alpha_s x0_hat + sqrt(sigma_s^2 - eta^2) eps_hat + eta xi; v the deterministic angle step
    z_s = cos(phi_s - phi_t) z_t + sin(phi_s - phi_t) v_hat; score the annealed-Langevin update
    z += sigma_t^2 s_hat + sqrt(2) sigma_t xi (no reverse-SDE drift, no final denoising), as in the seed.
    `clamp` clips the eps sampler's x0_hat to [-1, 1], as the seed does for images (not for its x sampler).
    Each network's x0 estimate is converted to the target it was trained on with `prediction_from_x0`.
    """
    from .formulation import prediction_from_x0

    process = get_objective("cosine").process
    grid = torch.linspace(1 - 1e-4, 1e-4, steps + 1, dtype=torch.float64)
    z = torch.randn(shape, generator=generator)

    def predict(z, t, kind):
        t_vec = torch.full((len(z),), float(t), dtype=torch.float64)
        alpha = float(process.alpha(t_vec[:1]))
        x0_hat = denoiser(z / alpha, process.ve_sigma(t_vec))
        return x0_hat, prediction_from_x0(kind, process, t_vec, z, x0_hat).to(z.dtype)

    for t, s in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        a_t, s_t = float(process.alpha(torch.tensor(t))), float(process.sigma(torch.tensor(t)))
        a_s, s_s = float(process.alpha(torch.tensor(s))), float(process.sigma(torch.tensor(s)))
        if target in ("x0", "eps"):
            x0_hat, eps_hat = predict(z, t, "eps")
            if clamp and target == "eps":
                x0_hat = x0_hat.clamp(-1, 1)
            eta = s_s / s_t * math.sqrt(max(0.0, 1 - a_t**2 / a_s**2))
            z = a_s * x0_hat + math.sqrt(max(0.0, s_s**2 - eta**2)) * eps_hat + eta * torch.randn(
                shape, generator=generator)
        elif target == "v":
            _, v_hat = predict(z, t, "v")
            delta = math.pi / 2 * (s - t)
            z = math.cos(delta) * z + math.sin(delta) * v_hat
        else:
            _, score_hat = predict(z, t, "score")
            z = z + s_t**2 * score_hat + math.sqrt(2) * s_t * torch.randn(shape, generator=generator)
    return z


def _evaluate_cell(denoiser, obj, train, test, preset: LossesPreset, seed: int, classifier=None) -> dict:
    """NELBO (bits/dim), rescaled loss, x0 error curve, the shared sampler's samples and their metrics."""
    from .likelihood import nelbo, rescaled_loss, x0_error_curve
    from .metrics import frechet_distance, point_metrics
    from .sampling import karras_sigmas, sample

    test_x = test.x[: preset.nelbo_points]
    bound = nelbo(denoiser, test_x, sigma_min=preset.sigma_min, sigma_max=preset.sigma_max,
                  samples=preset.nelbo_samples, quantization_step=_quantization_step(test), seed=seed)
    on_train = nelbo(denoiser, train.x[: preset.nelbo_points], sigma_min=preset.sigma_min,
                     sigma_max=preset.sigma_max, samples=preset.nelbo_samples, seed=seed)
    rescaled, rescaled_se = rescaled_loss(denoiser, test_x, get_objective("cosine-x0-simple"), seed=seed)
    errors = x0_error_curve(denoiser, test_x, np.geomspace(preset.sigma_min, 100.0, 21), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    sigmas = karras_sigmas(preset.sample_steps, sigma_min=preset.sigma_min, sigma_max=80.0)
    x = sample(denoiser, (preset.samples, *train.shape), sigmas, generator=gen)
    result = {"nelbo": asdict(bound), "train_nelbo_diffusion": on_train.diffusion,
              "rescaled_loss": rescaled, "rescaled_loss_se": rescaled_se, "x0_error_curve": asdict(errors)}
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
    from tqdm.auto import tqdm

    out = Path(out)
    for t in targets:
        if t not in LOSS_TARGETS:
            raise ValueError(f"unknown target {t!r}; choose from {', '.join(LOSS_TARGETS)}")
    for w in weights:
        if w not in LOSS_WEIGHTS:
            raise ValueError(f"unknown loss {w!r}; choose from {', '.join(LOSS_WEIGHTS)}")
    if preset_name not in PRESET_NAMES:
        raise ValueError(f"unknown preset {preset_name!r}; choose from {', '.join(PRESET_NAMES)}")
    for d in datasets:
        if d not in POINT_DATASETS + IMAGE_DATASETS:
            names = ", ".join(POINT_DATASETS + IMAGE_DATASETS)
            raise ValueError(f"unknown dataset {d!r}; choose from {names}")
    if not datasets or not targets or not weights or not seeds:
        raise ValueError("need at least one dataset, target, loss and seed")
    cells = [(d, t, w, s) for d in datasets for t in targets for w in weights for s in seeds]
    presets = {d: losses_preset(d, preset_name) for d in datasets}
    data = {d: _load_losses_data(d, presets[d], data_dir) for d in datasets}  # fail before writing anything
    bar = tqdm(total=len(cells), disable=not progress, desc="losses study", unit="cell")
    for d in datasets:
        preset, (train, test) = presets[d], data[d]
        data_out = out / d
        (data_out / "cells").mkdir(parents=True, exist_ok=True)
        floor = None
        classifier, accuracy = (None, None)
        if train.is_image:
            classifier, accuracy = _classifier(train, test, preset, data_out)
        for _, t, w, s in [c for c in cells if c[0] == d]:
            path = data_out / "cells" / f"{cell_name(d, t, w, s)}.json"
            if path.exists():
                bar.update(1)
                continue
            floor = floor or _floor(train, preset, data_out)
            bar.set_postfix(cell=cell_name(d, t, w, s))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s)
                den, obj, steps, seconds = _train_cell(train, t, w, s, preset, data_out / "runs" /
                                                       cell_name(d, t, w, s), progress=False)
                result = _evaluate_cell(den, obj, train, test, preset, s, classifier)
            result.update(dataset=d, target=t, loss=w, seed=s, preset=preset_name, objective=obj.name,
                          time_distribution=repr(obj.time_dist), steps=steps, train_seconds=seconds,
                          settings=asdict(preset), n_train=len(train), n_test=len(test),
                          train_fingerprint=train.fingerprint, classifier_accuracy=accuracy)
            atomic_write_text(path, json.dumps(result))
            bar.update(1)
    bar.close()
    return write_losses_report(out)


# -- aggregation and report --------------------------------------------------------------------

POINT_COLUMNS = (("nelbo_bpd", "NELBO bits/dim"), ("mean_distance", "mean dist."),
                 ("covariance_distance", "cov. dist."), ("sliced_wasserstein", "SW2"),
                 ("energy_distance", "energy dist."))
IMAGE_COLUMNS = (("nelbo_bpd", "NELBO bits/dim"), ("classifier_fd", "classifier FD"))
NATIVE_POINT_COLUMNS = (("native_mean_distance", "mean dist."), ("native_covariance_distance", "cov. dist."),
                        ("native_sliced_wasserstein", "SW2"), ("native_energy_distance", "energy dist."))
NATIVE_IMAGE_COLUMNS = (("native_classifier_fd", "classifier FD"),)
GAP_COLUMNS = (("rescaled_loss", "rescaled (x0 MSE) loss"), ("train_nelbo_diffusion", "train diffusion term"),
               ("floor_gap", "gap to floor"))


def _cell_values(cell: dict, floor: dict | None) -> dict:
    values = {"nelbo_bpd": cell["nelbo"]["bits_per_dim"], "rescaled_loss": cell["rescaled_loss"],
              "train_nelbo_diffusion": cell["train_nelbo_diffusion"], **cell["metrics"],
              **{f"native_{k}": v for k, v in cell["native_metrics"].items()}}
    if floor is not None:
        values["floor_gap"] = cell["train_nelbo_diffusion"] - floor["nelbo_diffusion"]
    return values


def load_cells(out) -> list[dict]:
    """Every finished cell result under `out`."""
    return [json.loads(p.read_text()) for p in sorted(Path(out).glob("*/cells/*.json"))]


def aggregate(cells: list[dict], floors: dict) -> list[dict]:
    """One row per (dataset, target, loss): mean and standard error over seeds of every value."""
    groups: dict = {}
    for c in cells:
        groups.setdefault((c["dataset"], c["target"], c["loss"]), []).append(
            _cell_values(c, floors.get(c["dataset"])))
    rows = []
    for (d, t, w), vals in groups.items():
        row = {"dataset": d, "target": t, "loss": w, "seeds": len(vals)}
        for key in vals[0]:
            if key.endswith("_se"):
                continue
            v = np.array([x[key] for x in vals], dtype=float)
            row[key] = float(v.mean())
            row[f"{key}_se"] = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
        rows.append(row)
    order = {name: i for i, name in enumerate(POINT_DATASETS + IMAGE_DATASETS + LOSS_TARGETS + LOSS_WEIGHTS)}
    return sorted(rows, key=lambda r: (order[r["dataset"]], order[r["target"]], order[r["loss"]]))


def _fmt(row: dict, key: str) -> str:
    if key not in row:
        return "–"
    value, se = row[key], row.get(f"{key}_se", math.nan)
    digits = 3 if abs(value) < 100 else 1
    return f"{value:.{digits}f} ± {se:.{digits}f}" if math.isfinite(se) else f"{value:.{digits}f}"


def markdown_table(rows: list[dict], columns, title: str) -> str:
    """A seed-paper-shaped table: one row per (dataset, target), NELBO-trained | simple-trained columns."""
    head = ["data", "target"] + [f"{label} ({w})" for w in LOSS_WEIGHTS for _, label in columns]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    index = {(r["dataset"], r["target"], r["loss"]): r for r in rows}
    for d, t in dict.fromkeys((r["dataset"], r["target"]) for r in rows):
        cells = [_fmt(index[(d, t, w)], key) if (d, t, w) in index else "–" for w in LOSS_WEIGHTS
                 for key, _ in columns]
        lines.append(f"| {d} | {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seed_comparison_table(rows: list[dict]) -> str:
    """Our mean / covariance distances (seed samplers and shared sampler) next to the seed paper's."""
    head = ["data", "target", "loss", "paper mean", "ours mean (seed sampler)", "ours mean (Heun)",
            "paper cov.", "ours cov. (seed sampler)", "ours cov. (Heun)"]
    lines = ["### Against the seed paper's 2-D table (its numbers: one run average, no SE)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        paper = SEED_2D_TABLE.get((r["dataset"], r["target"]))
        if paper is None:
            continue
        p_mean, p_cov = (paper[1], paper[2]) if r["loss"] == "nelbo" else (paper[4], paper[5])
        lines.append(f"| {r['dataset']} | {r['target']} | {r['loss']} | {p_mean:.3f} | "
                     f"{_fmt(r, 'native_mean_distance')} | {_fmt(r, 'mean_distance')} | {p_cov:.3f} | "
                     f"{_fmt(r, 'native_covariance_distance')} | {_fmt(r, 'covariance_distance')} |")
    return "\n".join(lines) + "\n"


def write_losses_report(out) -> dict:
    """Aggregate the finished cells into table.md, table.csv, summary.json and the figures."""
    out = Path(out)
    cells = load_cells(out)
    if not cells:
        raise ValueError(f"{out}: no finished cells to report")
    floors = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/floor.json")}
    rows = aggregate(cells, floors)
    seeds = sorted({c["seed"] for c in cells})
    presets = sorted({c["preset"] for c in cells})
    note = (f"Preset(s): {', '.join(presets)}; seeds {seeds}; each cell: mean ± standard error over seeds. "
            "NELBO: one continuous-time VDM estimator for every model (bits/dim; 2-D: continuous density "
            "bound; images: dequantised). Metrics against a held-out test set. Classifier FD is not the "
            "Inception FID.\n\n")
    points = [r for r in rows if r["dataset"] in POINT_DATASETS]
    images = [r for r in rows if r["dataset"] in IMAGE_DATASETS]
    text = "## Loss-function comparison\n\n" + note
    if points:
        text += markdown_table(points, POINT_COLUMNS, "2-D data: likelihood and sample metrics (shared Heun "
                                                      "sampler)") + "\n"
        text += markdown_table(points, NATIVE_POINT_COLUMNS, "2-D data: the seed's own samplers") + "\n"
        text += seed_comparison_table(points) + "\n"
    if images:
        text += markdown_table(images, IMAGE_COLUMNS, "Images: likelihood and classifier Fréchet distance "
                                                      "(shared Heun sampler)") + "\n"
        text += markdown_table(images, NATIVE_IMAGE_COLUMNS, "Images: the seed's per-target samplers") + "\n"
    text += markdown_table(rows, GAP_COLUMNS, "x0-space losses and the distance to the optimal-loss floor "
                                              "(nats/dim)") + "\n"
    atomic_write_text(out / "table.md", text)
    keys = sorted({k for r in rows for k in r} - {"dataset", "target", "loss", "seeds"})
    buf = io.StringIO()
    fields = ["dataset", "target", "loss", "seeds", *keys]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "table.csv", buf.getvalue())
    summary = {"rows": rows, "floors": {d: {k: f[k] for k in ("nelbo_diffusion", "nelbo_diffusion_se")}
                                        for d, f in floors.items()},
               "seeds": seeds, "presets": presets, "cells": len(cells)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    _plot_losses(out, cells, floors)
    return summary


def _plot_losses(out: Path, cells: list[dict], floors: dict) -> None:
    """Per dataset: x0 loss vs t against the floor, and the samples of each (target, loss)."""
    import matplotlib.pyplot as plt

    from .plots import save_figure

    cosine = get_objective("cosine").process
    for d in sorted({c["dataset"] for c in cells}):
        mine = [c for c in cells if c["dataset"] == d]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        lowest = min(min(c["x0_error_curve"]["loss"]) for c in mine)
        for ax, w in zip(axes, LOSS_WEIGHTS, strict=True):
            for t in LOSS_TARGETS:
                runs = [c for c in mine if c["target"] == t and c["loss"] == w]
                if not runs:
                    continue
                sig = np.array(runs[0]["x0_error_curve"]["sigma"])
                loss = np.mean([r["x0_error_curve"]["loss"] for r in runs], 0)
                ax.plot(cosine.t_of_sigma(torch.tensor(sig)).numpy(), loss, marker=".", label=t)
            if d in floors:
                fc = OptimalLossCurve.from_dict(floors[d]["curve"])
                ax.plot(cosine.t_of_sigma(torch.tensor(fc.sigma)).numpy(), fc.loss, "k--",
                        label="J* (train set)")
            # J* of a small training set collapses far below any model: keep the models readable
            ax.set(yscale="log", ylim=(lowest / 10, None), xlabel="t  (cosine: sigma = tan(pi t / 2))",
                   title=f"{d}: {w}-trained")
            ax.legend(fontsize=8)
        axes[0].set_ylabel("test x0 MSE per dim")
        save_figure(fig, out / d / "loss_vs_t.png")
        _plot_samples(out / d / "samples.png", d, mine, "samples", "the shared Heun sampler")
        _plot_samples(out / d / "native_samples.png", d, mine, "native_samples", "the seed's own samplers")


def _plot_samples(path: Path, dataset: str, cells: list[dict], key: str, sampler: str) -> None:
    import matplotlib.pyplot as plt

    from .plots import save_figure

    seed0 = {(c["target"], c["loss"]): c for c in cells if c["seed"] == min(x["seed"] for x in cells)}
    targets = [t for t in LOSS_TARGETS if any(k[0] == t for k in seed0)]
    size = (2.6 * len(targets), 5.4)
    fig, axes = plt.subplots(len(LOSS_WEIGHTS), len(targets), figsize=size, squeeze=False)
    for i, w in enumerate(LOSS_WEIGHTS):
        for j, t in enumerate(targets):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            c = seed0.get((t, w))
            if c is None:
                continue
            x = np.asarray(c[key])
            if x.shape[1] == 2:
                ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5)
                ax.set(xlim=(-3, 3), ylim=(-3, 3))
            else:
                side = int(round(math.sqrt(x.shape[1])))
                grid = x[:64].reshape(8, 8, side, side).transpose(0, 2, 1, 3).reshape(8 * side, 8 * side)
                ax.imshow((grid + 1) / 2, cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{t}, {w}", fontsize=9)
    fig.suptitle(f"{dataset}: samples of {sampler} (seed {min(x['seed'] for x in cells)})")
    save_figure(fig, path)



# ============================================================================================
# The diagnosis study (issue 3): mainstream variants trained on the same data, their per-sigma
# x0-loss gaps to J*(sigma) on one plot (the analogue of the optimal-loss paper's Figure 2).
# ============================================================================================

DIAGNOSE_VARIANTS = ("vp", "ve", "edm", "flow")  # VP-eps, VE-eps, EDM-F, flow matching (velocity)
DIAGNOSE_DATASETS = ("digits", "fashion-mnist")
COMMON_OBJECTIVE = "edm"  # the common weighting under which the totals of all variants are also compared


@dataclass(frozen=True)
class DiagnoseBudget:
    """Training and evaluation budget of one dataset in the diagnosis study."""

    model: str
    width: int
    steps: int
    batch_size: int
    lr: float
    levels: int  # sigma levels, geometric over [0.002, 80]
    floor_queries: int  # queries per level of the full J* estimator
    model_queries: int  # noisy queries per level and split for the model losses
    samples: int


DIAGNOSE_BUDGETS = {
    "cpu": {"digits": DiagnoseBudget("unet", 16, 1000, 128, 2e-3, 14, 2048, 1024, 36),
            "fashion-mnist": DiagnoseBudget("unet", 16, 400, 64, 2e-3, 14, 1024, 1024, 36)},
    "quick": {"digits": DiagnoseBudget("mlp", 64, 40, 64, 2e-3, 5, 64, 64, 4),
              "fashion-mnist": DiagnoseBudget("mlp", 64, 40, 64, 2e-3, 5, 64, 64, 4)},
}


def diagnose_floor(train, budget: DiagnoseBudget, path: Path, seed: int, progress: bool) -> OptimalLossCurve:
    """J*(sigma) of the training set on the study's grid (reused from `path` if data and settings match)."""
    from .estimators import Estimator, EstimatorConfig

    sigmas = np.geomspace(0.002, 80.0, budget.levels)
    if path.exists():
        curve = OptimalLossCurve.load(path)
        settings = curve.settings
        if (curve.fingerprint == train.fingerprint and np.allclose(curve.sigma, sigmas)
                and settings.get("queries") == budget.floor_queries and settings.get("seed") == seed):
            return curve
    est = Estimator(train.rows(), EstimatorConfig(queries=budget.floor_queries))
    curve = est.curve(sigmas, seed=seed, progress=progress)
    curve.fingerprint = train.fingerprint
    curve.save(path, data=train.describe())
    return curve


def diagnose_variant(train, test, variant: str, budget: DiagnoseBudget, curve: OptimalLossCurve,
                     run_dir: Path, seed: int, progress: bool) -> dict:
    """Train one variant (resumable in `run_dir`), diagnose it on both splits and draw samples."""
    from .diagnosis import diagnose, totals
    from .models import ModelConfig
    from .sampling import sample
    from .training import TrainConfig, data_info
    from .training import train as run_training

    config = TrainConfig(steps=budget.steps, batch_size=budget.batch_size, lr=budget.lr, seed=seed,
                         log_every=max(1, budget.steps // 10), checkpoint_every=max(1, budget.steps // 4))
    model = ModelConfig(budget.model, train.shape, budget.width)
    info = data_info(train, {"name": train.name, "n": None, "seed": 0, "flip": False})
    trainer = run_training(train.x, variant, model, config, out=run_dir, resume=True, data_info=info,
                           progress=progress)
    denoiser = trainer.denoiser()
    result = diagnose(denoiser, trainer.objective, curve, train.x, test_x=test.x,
                      queries=budget.model_queries, seed=seed)
    common = get_objective(COMMON_OBJECTIVE)
    x = sample(denoiser, (budget.samples, *train.shape), generator=torch.Generator().manual_seed(seed))
    return {"variant": variant, "objective": trainer.objective.name, "target": trainer.objective.target,
            "steps": trainer.step, "train_seconds": trainer.elapsed, **result.to_dict(),
            "common_objective": COMMON_OBJECTIVE,
            "common_totals": {s: totals(m, curve, common) for s, m in result.model_curves.items()},
            "samples": x.clamp(-1, 1).reshape(len(x), -1).tolist()}


def run_diagnose_study(datasets, variants, budget_name: str, out, *, seed: int = 0, data_dir=None,
                       progress: bool = True) -> dict:
    """Train every variant on every dataset, diagnose each against J*, write JSON/CSV and figures."""
    from .data import load_dataset

    if budget_name not in DIAGNOSE_BUDGETS:
        raise ValueError(f"unknown budget {budget_name!r}; choose from {', '.join(DIAGNOSE_BUDGETS)}")
    for v in variants:
        get_objective(v)
    unknown = [name for name in datasets if name not in DIAGNOSE_DATASETS]
    if unknown:
        raise ValueError(f"unknown dataset {unknown[0]!r} for the diagnose study; choose from "
                         f"{', '.join(DIAGNOSE_DATASETS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"budget": budget_name, "seed": seed, "datasets": {}}
    for name in datasets:
        budget = DIAGNOSE_BUDGETS[budget_name][name]
        kw = {"data_dir": data_dir} if name == "fashion-mnist" else {}
        train, test = load_dataset(name, **kw), load_dataset(name, split="test", **kw)
        curve = diagnose_floor(train, budget, out / f"optimal_loss_{name}.json", seed, progress)
        results = [diagnose_variant(train, test, v, budget, curve, out / "runs" / name / v, seed, progress)
                   for v in variants]
        report["datasets"][name] = {"budget": asdict(budget), "data": train.describe(),
                                    "test_data": test.describe(), "optimal_loss": curve.to_dict(),
                                    "variants": results}
        plot_variant_samples(results, train.shape, out / f"samples_{name}.png", name)
    atomic_write_text(out / "diagnose_study.json", json.dumps(report, indent=1))
    atomic_write_text(out / "gaps.csv", diagnose_gaps_csv(report))
    atomic_write_text(out / "totals.csv", diagnose_totals_csv(report))
    plot_diagnose_study(report, out / "gaps.png")
    return report


def diagnose_gaps_csv(report: dict) -> str:
    """One row per (dataset, variant, split, sigma)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset", "variant", "split", "sigma", "model_loss", "model_stderr", "optimal_loss",
                     "optimal_stderr", "gap", "gap_stderr", "relative_gap"])
    for name, d in report["datasets"].items():
        for r in d["variants"]:
            for split in ("train", "test"):
                for g in r[split] or []:
                    writer.writerow([name, r["variant"], split] + [f"{g[k]:.6g}" for k in (
                        "sigma", "model_loss", "model_stderr", "optimal_loss", "optimal_stderr", "gap",
                        "gap_stderr", "relative_gap")])
    return buf.getvalue()


def diagnose_totals_csv(report: dict) -> str:
    """One row per (dataset, variant, split): totals under the variant's own objective and under EDM's."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset", "variant", "target", "steps", "split", "own_model", "own_optimal", "own_gap",
                     "own_gap_stderr", "edm_weighted_model", "edm_weighted_optimal", "edm_weighted_gap",
                     "edm_weighted_gap_stderr", "max_relative_gap", "sigma_of_max_gap"])
    for name, d in report["datasets"].items():
        for r in d["variants"]:
            for split in ("train", "test"):
                own, common = r["totals"][split], r["common_totals"][split]
                gaps = r[split]
                worst = max(gaps, key=lambda g: g["relative_gap"])
                values = (own["model"], own["optimal"], own["gap"], own["gap_stderr"], common["model"],
                          common["optimal"], common["gap"], common["gap_stderr"], worst["relative_gap"],
                          worst["sigma"])
                writer.writerow([name, r["variant"], r["target"], r["steps"], split]
                                + [f"{v:.6g}" for v in values])
    return buf.getvalue()


def plot_diagnose_study(report: dict, path) -> None:
    """Per dataset: model losses and J* (top), per-sigma gaps of all variants (bottom); test dashed."""
    import matplotlib.pyplot as plt

    from .plots import save_figure

    names = list(report["datasets"])
    fig, axes = plt.subplots(2, len(names), figsize=(6.5 * len(names), 7.5), squeeze=False, sharex=True,
                             gridspec_kw={"height_ratios": [2, 3]})
    for j, name in enumerate(names):
        d = report["datasets"][name]
        top, bottom = axes[0, j], axes[1, j]
        opt = d["optimal_loss"]
        top.plot(opt["sigma"], opt["loss"], "k-", lw=2.2, label="optimal loss J*(σ)")
        for i, r in enumerate(d["variants"]):
            color = f"C{i}"
            label = f"{r['variant']} ({r['target']}-prediction)"
            for split, style in (("train", "-"), ("test", "--")):
                gaps = r[split] or []
                sig = [g["sigma"] for g in gaps]
                if split == "train":
                    top.plot(sig, [g["model_loss"] for g in gaps], style, color=color, lw=1.2, label=label)
                gap = np.array([g["gap"] for g in gaps])
                se = np.array([g["gap_stderr"] for g in gaps])
                bottom.plot(sig, gap, style + "o", color=color, ms=3, lw=1.3,
                            label=f"{label}, {split}" if split == "train" else f"{r['variant']}, test")
                if split == "train":
                    bottom.fill_between(sig, gap - 2 * se, gap + 2 * se, color=color, alpha=0.2, lw=0)
        top.set_xscale("log")
        top.set_yscale("log")
        top.set_ylim(bottom=1e-5)
        top.set_ylabel("per-dimension x0 MSE (log)")
        top.set_title(f"{name} (N = {d['data']['n']}): {d['budget']['model']} width {d['budget']['width']}, "
                      f"{d['budget']['steps']} steps × batch {d['budget']['batch_size']}", fontsize=10)
        top.legend(fontsize=7)
        bottom.axhline(0, color="k", lw=0.8)
        bottom.set_yscale("symlog", linthresh=1e-3)
        lowest = min([g["gap"] for r in d["variants"] for g in r["train"]] + [0.0])
        bottom.set_ylim(bottom=min(-1e-3, 2 * lowest))
        bottom.set_xlabel("noise level σ (VE)")
        bottom.set_ylabel("gap J(σ) − J*(σ)  (symlog)")
        bottom.legend(fontsize=7, ncol=2)
    fig.suptitle("Per-σ x0-loss gap to the optimal loss (solid: train, dashed: test; bands ± 2 SE)",
                 fontsize=11)
    save_figure(fig, path)


def plot_variant_samples(results: list[dict], shape, path, name: str) -> None:
    """One panel of samples per variant (images as a grid, points as a scatter)."""
    import matplotlib.pyplot as plt

    from .plots import save_figure

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.4), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        x = np.asarray(r["samples"])
        ax.set_xticks([])
        ax.set_yticks([])
        if len(shape) == 3:
            c, h, w = shape
            k = int(math.isqrt(len(x)))
            tiles = np.pad(x[: k * k].reshape(k, k, h, w), ((0, 0), (0, 0), (1, 0), (1, 0)),
                           constant_values=1)
            grid = tiles.transpose(0, 2, 1, 3).reshape(k * (h + 1), k * (w + 1))  # one white pixel between
            ax.imshow((grid + 1) / 2, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.scatter(x[:, 0], x[:, 1], s=2)
        ax.set_title(f"{r['variant']} ({r['target']})", fontsize=9)
    fig.suptitle(f"{name}: samples (Heun, 18 levels, EMA weights)", fontsize=10)
    save_figure(fig, path)
