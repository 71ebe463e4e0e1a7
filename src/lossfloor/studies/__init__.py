"""The reproducible studies behind the README's figures: one module per study, shared parts in `common`.

``lossfloor.studies`` re-exports each study's public names (``run_losses_study``, ``write_losses_report``,
``run_diagnose_study``, the presets, ...), so ``from lossfloor.studies import run_losses_study`` keeps
working.  To add a study, see `lossfloor.studies.common` and docs/ARCHITECTURE.md.
"""

from lossfloor.evaluate.sampling import seed_native_sample
from lossfloor.objective.objective import get_objective
from lossfloor.studies.common import (
    cached_classifier,
    cached_floor,
    check_choice,
    load_cells,
    load_floor,
    mean_se,
    paired_difference,
    run_cells,
    seeded,
    train_run,
)
from lossfloor.studies.diagnose import (
    COMMON_OBJECTIVE,
    DIAGNOSE_BUDGET_TIMES,
    DIAGNOSE_BUDGETS,
    DIAGNOSE_DATASETS,
    DIAGNOSE_VARIANTS,
    DiagnoseBudget,
    diagnose_floor,
    diagnose_gaps_csv,
    diagnose_terminal_table,
    diagnose_totals_csv,
    diagnose_variant,
    run_diagnose_study,
)
from lossfloor.studies.losses import run_losses_study
from lossfloor.studies.losses_design import (
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
from lossfloor.studies.losses_report import (
    SEED_2D_TABLE,
    aggregate,
    paired_rows,
    terminal_table,
    write_losses_report,
)

__all__ = [
    "COMMON_OBJECTIVE", "DIAGNOSE_BUDGET_TIMES", "DIAGNOSE_BUDGETS", "DIAGNOSE_DATASETS", "DIAGNOSE_VARIANTS",
    "FASHION_PRESETS",
    "IMAGE_DATASETS", "IMAGE_PRESETS", "LOSS_TARGETS", "LOSS_WEIGHTS", "POINTS_PRESETS", "POINT_DATASETS",
    "PRESET_NAMES", "SEED_2D_TABLE", "DiagnoseBudget", "LossesPreset", "aggregate", "cached_classifier",
    "cached_floor", "cell_name", "check_choice", "diagnose_floor", "diagnose_gaps_csv",
    "diagnose_terminal_table", "diagnose_totals_csv", "diagnose_variant", "get_objective", "load_cells",
    "load_floor", "losses_objective", "losses_preset", "mean_se", "paired_difference", "paired_rows",
    "run_cells",
    "run_diagnose_study", "run_losses_study", "seed_native_sample", "seeded", "terminal_table", "train_run",
    "write_losses_report",
]
