"""The scaling study: does the training loss follow a power law in compute better once J* is subtracted?"""

from lossfloor.studies.scaling.report import scaling_terminal_table, write_scaling_report
from lossfloor.studies.scaling.run import SCALING_PRESETS, ScalingPreset, run_scaling_study

__all__ = [
    "SCALING_PRESETS", "ScalingPreset", "run_scaling_study", "scaling_terminal_table",
    "write_scaling_report"
]
