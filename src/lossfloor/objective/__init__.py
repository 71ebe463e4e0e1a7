"""Every diffusion objective as an x0-loss weight lambda(sigma) and a noise density p(sigma): processes,
noise densities, weights, targets and preconditioning, and `Objective` with its presets."""

from lossfloor.objective.objective import PRESETS, Objective, get_objective, objective_names

__all__ = ["PRESETS", "Objective", "get_objective", "objective_names"]
