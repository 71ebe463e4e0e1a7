"""The schedule study: the paper's optimal-loss schedule, its ablations and the baselines."""

from lossfloor.studies.schedule.run import (
    PRESETS,
    SCHEDULE_STUDY,
    SchedulePreset,
    run_schedule_study,
    terminal_table,
    write_schedule_report,
)

__all__ = [
    "PRESETS", "SCHEDULE_STUDY", "SchedulePreset", "run_schedule_study", "terminal_table",
    "write_schedule_report"
]
