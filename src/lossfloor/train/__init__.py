"""Training: schedules (weights and densities, including those that need J*), the trainer, checkpoints,
logs, `GapMonitor` and `ScheduleSampler` for users' own loops."""

from lossfloor.train.checkpoint import Checkpoint, load_checkpoint
from lossfloor.train.monitor import BinnedLoss, GapMonitor
from lossfloor.train.sampler import ScheduleSampler
from lossfloor.train.schedules import SCHEDULES, apply_schedule, schedule_names
from lossfloor.train.trainer import TrainConfig, Trainer, train

__all__ = ["SCHEDULES", "BinnedLoss", "Checkpoint", "GapMonitor", "ScheduleSampler", "TrainConfig", "Trainer",
           "apply_schedule", "load_checkpoint", "schedule_names", "train"]
