"""The diagnosis study: mainstream variants trained on the same data, their per-sigma gaps to J*(sigma)."""

from lossfloor.studies.diagnose.run import (
    COMMON_OBJECTIVE,
    DIAGNOSE_BUDGET_TIMES,
    DIAGNOSE_BUDGETS,
    DIAGNOSE_DATASETS,
    DIAGNOSE_VARIANTS,
    DiagnoseBudget,
    diagnose_gaps_csv,
    diagnose_terminal_table,
    diagnose_totals_csv,
    run_diagnose_study,
)

__all__ = [
    "COMMON_OBJECTIVE", "DIAGNOSE_BUDGETS", "DIAGNOSE_BUDGET_TIMES", "DIAGNOSE_DATASETS",
    "DIAGNOSE_VARIANTS", "DiagnoseBudget", "diagnose_gaps_csv", "diagnose_terminal_table",
    "diagnose_totals_csv", "run_diagnose_study"
]
