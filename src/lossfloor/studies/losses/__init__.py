"""The loss-function study: targets x0 / eps / v / score x NELBO vs simple weights on one NELBO yardstick."""

from lossfloor.studies.losses.design import (
    FASHION_PRESETS,
    IMAGE_DATASETS,
    IMAGE_PRESETS,
    LOSS_TARGETS,
    LOSS_WEIGHTS,
    POINT_DATASETS,
    POINTS_PRESETS,
    PRESET_NAMES,
    LossesPreset,
    cell_name,
    losses_objective,
    losses_preset,
)
from lossfloor.studies.losses.report import (
    SEED_2D_TABLE,
    aggregate,
    paired_rows,
    terminal_table,
    write_losses_report,
)
from lossfloor.studies.losses.run import run_losses_study

__all__ = [
    "FASHION_PRESETS", "IMAGE_DATASETS", "IMAGE_PRESETS", "LOSS_TARGETS", "LOSS_WEIGHTS", "POINTS_PRESETS",
    "POINT_DATASETS", "PRESET_NAMES", "SEED_2D_TABLE", "LossesPreset", "aggregate", "cell_name",
    "losses_objective", "losses_preset", "paired_rows", "run_losses_study", "terminal_table",
    "write_losses_report"
]
