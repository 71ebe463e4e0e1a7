"""`lossfloor train`: settings, checks and a resumable training run of any objective and schedule."""

from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lossfloor.app.checks import check_model_size
from lossfloor.app.common import (
    check_out_dir,
    matching_curve,
    resolve_device,
    sigma_data_note,
    with_sigma_data,
)
from lossfloor.core.errors import InputError
from lossfloor.data.dataset import Dataset
from lossfloor.data.load import load_dataset
from lossfloor.data.toys import TOYS
from lossfloor.nets.networks import ModelConfig, build_model, parameter_count
from lossfloor.objective.objective import get_objective
from lossfloor.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from lossfloor.train.schedules import apply_schedule
from lossfloor.train.trainer import TrainConfig, Trainer, data_info

TRAIN_FILES = ("checkpoint.pt", "log.csv", "binned.csv")


# -- train --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """`lossfloor train`: data, objective, network, optimisation and output options."""

    data: str = "digits"
    data_dir: str | None = None
    n: int | None = None
    data_seed: int = 0
    flip: bool = False
    objective: str = "edm"
    sigma_data: float | None = None  # EDM's preconditioning for data of this std (default: the preset's 0.5)
    schedule: str = "native"  # a name of lossfloor.train.schedules.SCHEDULES
    curve: str | None = None  # optimal_loss.json of the training data: the floor in the logs (every schedule)
    # and the optimal-loss schedules' weight and density
    critical_fraction: float | None = None  # optimal-loss schedules: sigma* where J*/V crosses it [0.01]
    model: str | None = None  # default: unet for images, mlp otherwise
    width: int | None = None
    depth: int | None = None
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 100
    ema: float = 0.999
    grad_clip: float = 1.0  # 0 disables clipping
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 500
    device: str = "cpu"
    out: str = "out/train"
    resume: bool = False
    force: bool = False


@dataclass
class TrainRun:
    """A checked training run: the trainer (resumed if asked) and what it trains on."""

    settings: TrainSettings
    trainer: Trainer
    dataset: Dataset
    model_kind: str
    parameters: int
    resumed: bool
    out: Path
    files: list[Path] = field(default_factory=list)

    def header(self) -> str:
        """One line: the data, the objective and the network (and the step a resumed run continues at)."""
        obj, s, data = self.trainer.objective, self.settings, self.dataset
        return (f"{s.data}: N = {len(data)}, shape {tuple(data.shape)}; objective {obj.name} "
                f"(target {obj.target}, weight {obj.weight}); {self.model_kind} with {self.parameters:,} "
                "parameters" + (f"; resuming at step {self.trainer.step}" if self.resumed else "")
                + (f"\n{note}" if (note := sigma_data_note(obj, float(data.x.var(0).mean()))) else ""))


def prepare_train(s: TrainSettings) -> TrainRun:
    """Check the options, load the data and build (or resume) the trainer; nothing is written."""

    objective = with_sigma_data(get_objective(s.objective), s.sigma_data)
    uses_curve = s.schedule.startswith("optimal-loss")
    if s.critical_fraction is not None and not uses_curve:
        raise InputError(f"--critical-fraction goes with the optimal-loss schedules, not --schedule "
                         f"{s.schedule}")
    if uses_curve and s.curve is None:
        raise InputError(f"--schedule {s.schedule} needs an optimal-loss curve: --curve optimal_loss.json of "
                         "the training data (from `lossfloor estimate` on the same data)")
    config = TrainConfig(steps=s.steps, batch_size=s.batch_size, lr=s.lr, warmup=s.warmup, ema=s.ema,
                         grad_clip=s.grad_clip or None, seed=s.seed, log_every=s.log_every,
                         checkpoint_every=s.checkpoint_every)
    dev = resolve_device(s.device)
    out = Path(s.out)
    check_out_dir(out, TRAIN_FILES, resume=s.resume, force=s.force)
    dataset = load_dataset(s.data, data_dir=s.data_dir, flip=s.flip, n=s.n, seed=s.data_seed)
    curve = matching_curve(s.curve, dataset) if s.curve is not None else None
    options = {} if s.critical_fraction is None else {"critical_fraction": s.critical_fraction}
    obj = apply_schedule(objective, s.schedule, curve, **options)
    kind = s.model or ("unet" if dataset.is_image else "mlp")
    model_config = ModelConfig(kind, dataset.shape, s.width, s.depth)
    check_model_size(model_config)  # counted on the meta device: a huge --width/--depth is refused first
    net = build_model(model_config)  # raises for a UNet on non-image data
    ckpt = load_checkpoint(out / CHECKPOINT_NAME) if s.resume and (out / CHECKPOINT_NAME).exists() else None
    if ckpt is not None:
        changed = [k for k, v in asdict(config).items() if k not in ("steps", "log_every", "checkpoint_every")
                   and ckpt.train.get(k) != v]
        if changed:
            both = ", ".join(f"{k} {ckpt.train.get(k)!r} (now {getattr(config, k)!r})" for k in changed)
            raise InputError(f"--resume: {out} was trained with {both}; pass the same options or use "
                             "another --out")
    # A toy's size is recorded even when defaulted, so the checkpoint reloads its data if TOY_SIZE changes.
    n = len(dataset) if s.n is None and s.data in TOYS else s.n
    load = {"name": s.data, "data_dir": s.data_dir, "n": n, "seed": s.data_seed, "flip": s.flip}
    trainer = Trainer(dataset.x, obj, model_config, config, out=out, data_info=data_info(dataset, load),
                      device=dev, std=dataset.std, curve=curve)
    if ckpt is not None:
        trainer.load_state(ckpt)
        if trainer.step >= s.steps:
            raise InputError(f"--resume: {out} is already at step {trainer.step}; raise --steps")
    return TrainRun(s, trainer, dataset, kind, parameter_count(net), ckpt is not None, out,
                    [out / name for name in TRAIN_FILES])


def run_train(run: TrainRun, progress: bool = True):
    """Train to --steps, checkpointing and logging into --out; returns the trainer."""
    run.out.mkdir(parents=True, exist_ok=True)
    if run.settings.force and not run.resumed:
        for path in run.files:
            path.unlink(missing_ok=True)
    return run.trainer.run(progress=progress)


# -- after training ------------------------------------------------------------------------------


class Terminated(Exception):
    """SIGTERM arrived during training (`sigterm_raises`)."""


@contextlib.contextmanager
def sigterm_raises():
    """Inside, SIGTERM (a scheduler's or `kill`'s) raises `Terminated` so the command can say one line
    instead of dying silently (main thread only; the previous handler is restored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def terminated_line(run: TrainRun) -> str:
    """What a terminated run left behind and how to continue it."""
    ckpt = run.files[0]
    saved = (f"{ckpt} holds the last checkpoint (every {run.settings.checkpoint_every} steps): rerun the "
             "same command with --resume to continue" if ckpt.exists() else "no checkpoint was written yet")
    return f"terminated (SIGTERM) at step {run.trainer.step}; {saved}"


def next_steps(run: TrainRun) -> str:
    """The commands that usually follow a training run."""
    curve = f" --curve {run.settings.curve}" if run.settings.curve else ""
    return (f"next: lossfloor diagnose --checkpoint {run.out}{curve} (the gap to J* per sigma; without "
            "--curve J* is estimated and saved), lossfloor sample --checkpoint " + str(run.out))
