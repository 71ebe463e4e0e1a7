"""Every CLI choice comes from a library `Registry`: the choices are its names, and an entry registered later
(a tiny estimator strategy here) is a choice without editing the CLI."""

import json

import numpy as np
import pytest

from lossfloor.app.cli import DATA_HELP, cli, main
from lossfloor.app.options import RegistryChoice
from lossfloor.core.registry import Registry
from lossfloor.data.load import BUILTIN
from lossfloor.data.toys import TOYS
from lossfloor.evaluate.sampling import SAMPLERS
from lossfloor.floor.config import ESTIMATORS, FORMS
from lossfloor.floor.strategies import EstimatorStrategy, Round
from lossfloor.floor.values import full_values
from lossfloor.nets.networks import MODELS
from lossfloor.train.schedules import SCHEDULES

REGISTRY_OPTIONS = {("estimate", "estimator"): ESTIMATORS, ("estimate", "form"): FORMS,
                    ("train", "schedule"): SCHEDULES, ("train", "model"): MODELS,
                    ("sample", "sampler"): SAMPLERS}


def _option(command: str, name: str):
    return next(p for p in cli.commands[command].params if p.name == name)


@pytest.mark.parametrize(("command", "name"), list(REGISTRY_OPTIONS))
def test_choices_are_the_registry_names(command, name):
    registry = REGISTRY_OPTIONS[(command, name)]
    option = _option(command, name)
    assert isinstance(option.type, RegistryChoice) and option.type.registry is registry
    assert list(option.type.choices) == registry.names() and len(registry) >= 2
    assert all(registry.description(n) for n in registry)  # each entry has its one-line description


def test_every_registry_choice_of_the_cli_is_listed_here():
    found = {(name, p.name) for name, command in cli.commands.items() if hasattr(command, "params")
             for p in command.params if isinstance(p.type, RegistryChoice)}
    assert found == set(REGISTRY_OPTIONS)


def test_toys_are_builtin_datasets():
    assert isinstance(TOYS, Registry) and set(TOYS) <= set(BUILTIN)
    assert all(name in DATA_HELP for name in BUILTIN)


class PlainFull(EstimatorStrategy):
    """The exact posterior over all rows, with none of the full estimator's extras."""

    def round(self, data, sigma, config, generator, progress) -> Round:
        values, sources = full_values(data, sigma, config, generator, progress)
        return Round(values, len(values), sources)


def test_a_registered_estimator_is_a_cli_choice(tmp_path, monkeypatch, capsys):
    """Registered after the CLI was imported, it runs and gives the full estimator's numbers."""
    path = tmp_path / "points.npy"
    np.save(path, np.random.default_rng(0).normal(size=(60, 3)))
    monkeypatch.setitem(ESTIMATORS.entries, "plain", (PlainFull, "the exact posterior, no extras"))
    assert "plain" in _option("estimate", "estimator").type.choices
    docs = {}
    for name in ("plain", "full"):
        with pytest.raises(SystemExit) as done:
            main(["estimate", "--no-progress", "--data", str(path), "--sigmas", "0.3,1,3",
                  "--estimator", name, "--out", str(tmp_path / name)])
        assert done.value.code == 0, capsys.readouterr().err
        docs[name] = json.loads((tmp_path / name / "optimal_loss.json").read_text())
    assert docs["plain"]["estimator"] == "plain"
    assert (docs["plain"]["loss"], docs["plain"]["stderr"]) == (docs["full"]["loss"], docs["full"]["stderr"])


def test_targets_and_image_sets_are_registries_the_cli_reads():
    """Targets (one affine pair each) and the built-in image sets are registry entries too: the objective
    help and --data's names come from them, and an unknown target is one line naming the choices."""
    import torch

    from lossfloor.core.errors import InputError
    from lossfloor.data.images import IMAGE_SETS
    from lossfloor.data.load import BUILTIN
    from lossfloor.objective.processes import VP
    from lossfloor.objective.targets import TARGETS, target_coefficients

    assert set(IMAGE_SETS) <= set(BUILTIN) and all(name in DATA_HELP for name in IMAGE_SETS)
    assert list(TARGETS) == ["x0", "eps", "v", "score", "velocity", "F"]
    with pytest.raises(InputError, match="unknown target 'nope'; choose from x0, eps"):
        target_coefficients("nope", VP(), torch.tensor([0.5]))
