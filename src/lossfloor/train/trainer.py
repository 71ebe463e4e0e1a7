"""Objective-driven training of diffusion models, with per-sigma x0-loss logging and exact resume.

The objective decides everything formulation-specific: ``objective.sample_t`` draws the times and
``objective.loss`` (the one place the training loss is assembled) noises the data, builds the regression
target and weighs its squared error.  Nothing in the loop is special-cased per formulation.

Programmatic API::

    from lossfloor.train import TrainConfig, train, load_checkpoint
    from lossfloor.nets import ModelConfig
    trainer = train(x, "edm", ModelConfig("unet", x.shape[1:]), TrainConfig(steps=2000), out="run/")
    denoiser = trainer.denoiser()          # EMA weights: callable (x_tilde, sigma) -> x0_hat
    trainer.last_interval                  # BinnedLoss of the last logging interval
    ckpt = load_checkpoint("run/checkpoint.pt"); denoiser = ckpt.denoiser()

- ``x`` is an (N, *shape) float tensor (images in [-1, 1]); ``objective`` an `Objective` or a name
  accepted by `get_objective`.  The checkpoint stores ``objective.to_dict()`` (process, target, weight,
  time distribution, preconditioning), so a modified objective reloads as trained; checkpoints written
  before that store only the name and are refused with one line saying so.
- Every step draws indices, times and noise from one seeded generator, so a run resumed from a
  checkpoint (model, EMA, optimizer, generator, step) continues bit-for-bit.
- The per-sample x0 loss ``||x0_hat - x0||^2 / D`` (the normalisation of J*) is the target error divided
  by `target_error_factor` (`Objective.x0_loss_from_target`); `monitor.BinnedLoss` bins it in log sigma, and
  `out/binned.csv` holds one block of bins per logging interval.  `monitor.GapMonitor` reuses `BinnedLoss`.
- Given the data's J*(sigma) curve (``curve=``), the trainer also bins each sample's gap x0 loss - J*(sigma)
  and logs `FloorValidator`'s scalar on those bins (`monitor.binned_excess`, the same function as
  `GapMonitor`'s): ``excess`` and ``excess_stderr`` in log.csv, ``gap`` / ``gap_stderr`` per bin in
  binned.csv, ``excess`` on the progress line and ``floor/excess`` in TensorBoard.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lossfloor.core.errors import InputError
from lossfloor.core.files import atomic_torch_save
from lossfloor.data.dataset import data_label
from lossfloor.data.load import load_dataset
from lossfloor.data.toys import TOYS
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.nets.denoiser import Denoiser
from lossfloor.nets.networks import ModelConfig, build_model, parameter_count
from lossfloor.objective.components import static_dict
from lossfloor.objective.objective import get_objective
from lossfloor.train.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_NAME, Checkpoint, load_checkpoint
from lossfloor.train.logs import LOG_FILES, append_csv, truncate_csv
from lossfloor.train.monitor import BinnedLoss, binned_excess

# --------------------------------------------------------------------------------------------
# The trainer.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (stored in the checkpoint)."""

    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 100  # linear learning-rate warm-up steps
    ema: float = 0.999  # EMA decay (ramped up as min(ema, (1+k)/(10+k)) early on)
    grad_clip: float | None = 1.0  # max gradient norm; None disables clipping
    seed: int = 0
    log_every: int = 100  # steps per logging interval (log.csv, binned.csv)
    checkpoint_every: int = 500

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.lr < math.inf:
            raise InputError(f"the learning rate must be positive and finite, got {self.lr}")
        if self.warmup < 0:
            raise InputError(f"warmup must be >= 0 steps, got {self.warmup}")
        if self.grad_clip is not None and not 0 < self.grad_clip < math.inf:
            raise InputError(f"grad_clip must be positive and finite (None: off), got {self.grad_clip}")
        if not 0 <= self.ema < 1:
            raise InputError(f"the EMA decay must be in [0, 1), got {self.ema}")


class Trainer:
    """Trains a network under an objective; see the module docstring."""

    def __init__(self, data: Tensor, objective, model: ModelConfig, config: TrainConfig = TrainConfig(), *,
                 out=None, data_info: dict | None = None, device="cpu", sigma_edges=None, std=None,
                 curve: OptimalLossCurve | None = None):
        self.objective = get_objective(objective) if isinstance(objective, str) else objective
        if self.objective.is_dynamic:  # training mutates its state: keep the caller's copy intact
            self.objective = copy.deepcopy(self.objective)
        self.data = torch.as_tensor(data, dtype=torch.float32).to(device)
        if tuple(self.data.shape[1:]) != model.shape:
            raise InputError(f"data of shape {tuple(self.data.shape[1:])} for a model of shape {model.shape}")
        # Stochastic latents (a Gaussian mixture, data/latents.py): a fresh z = mean + std eps every step.
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32).to(device)
        if self.std is not None and self.std.shape != self.data.shape:
            raise InputError(f"std of shape {tuple(self.std.shape)} for data of shape "
                             f"{tuple(self.data.shape)}")
        self.model_config, self.config, self.device = model, config, torch.device(device)
        self.data_info = dict(data_info or {})
        self.out = Path(out) if out is not None else None
        if self.out is not None:
            self.objective.to_dict()  # an unsavable objective fails now, not at the first checkpoint
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            net = build_model(model)
        self.net = net.to(self.device)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        if self.objective.parameters():  # e.g. EDM2's learned u(sigma)
            self.optimizer.add_param_group({"params": self.objective.parameters()})
        self.generator = torch.Generator().manual_seed(config.seed)
        self.binned = BinnedLoss(sigma_edges)
        self.last_interval = BinnedLoss(sigma_edges)  # the bins of the last finished logging interval
        dim = math.prod(model.shape)
        if curve is not None and curve.dim != dim:
            raise InputError(f"the J* curve is for dimension {curve.dim}, the data have {dim}: give the "
                             "curve of this training data")
        self.curve = curve
        self.gaps = BinnedLoss(sigma_edges) if curve is not None else None  # x0 loss - J*(sigma) per sample
        self.excess = None  # the last logged objective-weighted excess (with a curve)
        self.step = 0
        self.elapsed = 0.0  # seconds spent in `run`, over all resumed sessions
        self._loss_sum, self._loss_count = 0.0, 0
        self._writer = None

    # -- one step ------------------------------------------------------------------------------
    def losses(self, x0: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(training loss, x0 loss) per sample for clean data, times and noise: `Objective.loss`."""
        return self.objective.loss(self.net, x0, t, eps)

    def train_step(self) -> float:
        """One optimisation step; returns the batch's objective loss."""
        cfg, n = self.config, len(self.data)
        idx = torch.randint(n, (cfg.batch_size,), generator=self.generator)
        t = self.objective.sample_t(cfg.batch_size, self.generator)
        eps = torch.randn((cfg.batch_size, *self.data.shape[1:]), generator=self.generator).to(self.device)
        x0 = self.data[idx.to(self.device)]
        if self.std is not None:
            z = torch.randn((cfg.batch_size, *self.data.shape[1:]), generator=self.generator).to(self.device)
            x0 = x0 + self.std[idx.to(self.device)] * z
        loss, x0_loss = self.losses(x0, t, eps)
        loss = loss.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * min(1.0, (self.step + 1) / max(cfg.warmup, 1))
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        self.binned.update(self.objective.process.ve_sigma(t), x0_loss)
        if self.gaps is not None:
            sigma = self.objective.process.ve_sigma(t).detach().cpu().double().numpy()
            self.gaps.update(sigma, x0_loss.detach().cpu().double().numpy() - self.curve(sigma))
        self.objective.update(self.objective.process.ve_sigma(t), x0_loss)  # adaptive p(sigma)
        value = loss.item()
        self._loss_sum += value
        self._loss_count += 1
        return value

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.config.ema, (1 + self.step) / (10 + self.step))
        for p_ema, p in zip(self.ema.parameters(), self.net.parameters(), strict=True):
            p_ema.lerp_(p, 1 - decay)
        for b_ema, b in zip(self.ema.buffers(), self.net.buffers(), strict=True):
            b_ema.copy_(b)

    # -- the loop --------------------------------------------------------------------------------
    def run(self, progress: bool = True) -> Trainer:
        """Train until `config.steps`, logging and checkpointing along the way.

        The logs in `out` are first cut back to the current step (the rows of a killed run's unsaved
        stretch go), so a run resumed from its checkpoint, or restarted when none was written, leaves the
        same bytes as an uninterrupted one.  A NaN or infinite loss or weight raises `TrainingDiverged`
        before anything of it is saved: the checkpoint on disk stays the last good state.
        """
        cfg = self.config
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            for name in LOG_FILES:
                truncate_csv(self.out / name, self.step)
            for name in (CHECKPOINT_NAME, *LOG_FILES):  # temporary files of writes a kill cut short
                for stale in self.out.glob(f".{name}.*.tmp"):
                    stale.unlink(missing_ok=True)
        saved = self.step if self.out is not None and (self.out / CHECKPOINT_NAME).exists() else None
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not progress, unit="step",
                   desc=f"train {self.objective.name}")
        start = time.perf_counter() - self.elapsed
        try:
            while self.step < cfg.steps:
                value = self.train_step()
                if not math.isfinite(value):
                    raise self._diverged(f"the loss is {value}", saved)
                self.elapsed = time.perf_counter() - start
                bar.update(1)
                # The mean objective loss since the last log row: at a log step, log.csv's `loss`.
                excess = {} if self.excess is None else {"excess": f"{self.excess.value:.3g}"}
                bar.set_postfix(loss=f"{self._loss_sum / max(self._loss_count, 1):.4g}", **excess)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self._log()
                if self.out is not None and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps):
                    if not self._finite_weights():
                        raise self._diverged("the weights hold NaN or Inf", saved)
                    self.save()
                    saved = self.step
        finally:
            bar.close()
        return self

    def _finite_weights(self) -> bool:
        tensors = [*self.net.state_dict().values(), *self.ema.state_dict().values()]
        return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())

    def _diverged(self, what: str, saved: int | None) -> TrainingDiverged:
        kept = (f"{self.out / CHECKPOINT_NAME} keeps step {saved}" if saved is not None
                else "no checkpoint was written")
        return TrainingDiverged(f"training diverged at step {self.step}: {what} ({kept}); lower --lr, raise "
                                "--warmup or clip gradients (--grad-clip) and start over with --force")

    def _log(self) -> None:
        """Append the interval's mean loss and binned x0 losses to CSV (and TensorBoard), then reset."""
        mean_loss = self._loss_sum / max(self._loss_count, 1)
        log = dict(step=self.step, loss=mean_loss)
        bins = [dict(step=self.step, **r) for r in self.binned.rows()]
        if self.gaps is not None:
            self.excess = binned_excess(self.gaps, self.objective)
            log.update(excess=self.excess.value, excess_stderr=self.excess.stderr)
            for row, gap in zip(bins, self.gaps.rows(), strict=True):
                row.update(gap=gap["x0_loss"], gap_stderr=gap["stderr"])
        if self.out is not None:
            append_csv(self.out / "log.csv", [log])
            append_csv(self.out / "binned.csv", bins)
            writer = self._tensorboard()
            if writer is not None:
                writer.add_scalar("loss/objective", mean_loss, self.step)
                if self.excess is not None:
                    writer.add_scalar("floor/excess", self.excess.value, self.step)
                for r in self.binned.rows():
                    if r["count"]:
                        tag = f"x0_loss/log_sigma_{math.log(r['sigma']):+.2f}"
                        writer.add_scalar(tag, r["x0_loss"], self.step)
        self.last_interval = copy.deepcopy(self.binned)
        self.binned.reset()
        if self.gaps is not None:
            self.gaps.reset()
        self._loss_sum, self._loss_count = 0.0, 0

    def _tensorboard(self):
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # TensorBoard is optional
                self._writer = False
                return None
            self._writer = SummaryWriter(str(self.out / "tensorboard"))
        return self._writer or None

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return dict(
            format=CHECKPOINT_FORMAT, step=self.step, objective=self.objective.to_dict(),
            model=self.model_config.to_dict(), data=self.data_info, train=asdict(self.config),
            parameters=parameter_count(self.net), net=self.net.state_dict(), ema=self.ema.state_dict(),
            optimizer=self.optimizer.state_dict(), generator=self.generator.get_state(),
            binned=self.binned.state_dict(), interval=[self._loss_sum, self._loss_count],
            elapsed=self.elapsed, **({"gaps": self.gaps.state_dict()} if self.gaps is not None else {}))

    def save(self, path=None) -> Path:
        """Write the checkpoint atomically (default `out/checkpoint.pt`)."""
        path = Path(path) if path is not None else self.out / CHECKPOINT_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self.state_dict(), path)
        return path

    def load_state(self, ckpt: Checkpoint) -> None:
        """Continue from a checkpoint of the same run (objective, model and data must match).

        The objective must match in full (process, target, weight, time distribution, preconditioning;
        an old checkpoint's bare name: by name); its saved "state" entries (a dynamic schedule's) are taken
        from the checkpoint.
        """
        saved = ckpt.state["objective"]
        if isinstance(saved, str):
            same = saved == self.objective.name
        else:
            same = static_dict(saved) == static_dict(self.objective.to_dict())
        if not same:
            raise InputError(f"checkpoint objective {ckpt.objective_name!r} differs from "
                             f"{self.objective.name!r} (name or settings)")
        if not isinstance(saved, str):
            self.objective = ckpt.objective
            if self.objective.parameters():  # the optimizer must step the reloaded ones
                self.optimizer.param_groups[1]["params"] = self.objective.parameters()
        if ckpt.model != self.model_config:
            raise InputError(f"checkpoint model {ckpt.model} differs from {self.model_config}")
        theirs, ours = ckpt.data.get("fingerprint"), self.data_info.get("fingerprint")
        if theirs and ours and theirs != ours:
            raise InputError(f"the checkpoint was trained on {data_label(ckpt.data)}, not on "
                             f"{data_label(self.data_info)} (the data fingerprints differ)")
        s = ckpt.state
        self.net.load_state_dict(s["net"])
        self.ema.load_state_dict(s["ema"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.generator.set_state(s["generator"])
        self.binned.load_state_dict(s["binned"])
        if self.gaps is not None and "gaps" in s:
            self.gaps.load_state_dict(s["gaps"])
        self._loss_sum, self._loss_count = float(s["interval"][0]), int(s["interval"][1])
        self.step = ckpt.step
        self.elapsed = float(s.get("elapsed", 0.0))  # run() drops log rows written after the checkpoint

    def denoiser(self, ema: bool = True) -> Denoiser:
        """The x0-denoiser with the EMA (default) or raw weights, in eval mode."""
        return Denoiser(copy.deepcopy(self.ema if ema else self.net), self.objective).eval()


class TrainingDiverged(InputError):
    """The loss or the weights became NaN or infinite; nothing of the diverged state was saved."""


def train(data: Tensor, objective, model: ModelConfig, config: TrainConfig = TrainConfig(), *, out=None,
          resume: bool = False, data_info: dict | None = None, device="cpu",
          progress: bool = True, std=None, curve: OptimalLossCurve | None = None) -> Trainer:
    """Train (or, with `resume`, continue) a model; checkpoints go to `out/checkpoint.pt` if `out` is set.
    With `std` (data's shape) every point is a Gaussian: a fresh z = data + std eps each step; with the
    data's J*(sigma) `curve`, the logs carry the objective-weighted excess over the floor."""
    trainer = Trainer(data, objective, model, config, out=out, data_info=data_info, device=device, std=std,
                      curve=curve)
    if out is not None:
        path = Path(out) / CHECKPOINT_NAME
        if resume and path.exists():
            trainer.load_state(load_checkpoint(path))
        elif not resume and any((Path(out) / name).exists() for name in (CHECKPOINT_NAME, *LOG_FILES)):
            raise InputError(f"{out} already holds a run; pass resume=True (--resume) or choose another "
                             "folder")
    return trainer.run(progress=progress)  # with resume and no checkpoint: from step 0, old log rows dropped


def data_info(dataset, load_args: dict) -> dict:
    """What a checkpoint records about its data: `Dataset.describe()`, scaling and how to reload it."""
    return {**dataset.describe(), "scaling": dataset.scaling, "load": dict(load_args)}


def reload_data(ckpt: Checkpoint, split: str = "train"):
    """The checkpoint's dataset, reloaded with the recorded arguments; the train split must match the
    recorded fingerprint."""

    load = ckpt.data.get("load")
    if not load:
        raise InputError(f"{ckpt.path}: the checkpoint does not record how to load its data; pass --data")
    # A subset (--n) applies to the training split; toys draw n points for either split.
    n = load.get("n") if split == "train" or load["name"] in TOYS else None
    dataset = load_dataset(load["name"], data_dir=load.get("data_dir"), split=split,
                           flip=load.get("flip", False), n=n, seed=load.get("seed", 0))
    if split == "train" and dataset.fingerprint != ckpt.data.get("fingerprint"):
        raise InputError(f"{load['name']}: the reloaded training data differs from the checkpoint's "
                         "(fingerprint mismatch); pass --data explicitly")
    return dataset
