"""Objectives as data: to_dict / from_dict round trips, the component registry, and checkpoints that
reload a modified objective with the same lambda(sigma) and p(sigma)."""

import json
import math

import pytest
import torch

from lossfloor.core.errors import InputError
from lossfloor.nets.networks import ModelConfig
from lossfloor.objective.components import COMPONENTS, Component, component_from_dict, register_component
from lossfloor.objective.densities import DiscreteUniformT, TimeDistribution, UniformT
from lossfloor.objective.legacy import NAMED_KINDS
from lossfloor.objective.objective import Objective, get_objective, objective_names
from lossfloor.objective.processes import Discrete
from lossfloor.objective.targets import TARGETS
from lossfloor.objective.weights import Simple
from lossfloor.train.checkpoint import load_checkpoint
from lossfloor.train.trainer import TrainConfig, Trainer, train

DISCRETE = [n for n in objective_names() if get_objective(n).is_discrete]
COMBINATIONS = [f"{n}-{t}-{w}" for n in objective_names() for t in TARGETS for w in ("simple", "nelbo")
                if not (w == "nelbo" and n in DISCRETE)]
SIGMA = torch.logspace(-2.5, 2.5, 41, dtype=torch.float64)
TINY = ModelConfig("mlp", (2,), width=16, depth=1)


def loss_study_objective(target="eps", sigma_min=1e-2) -> Objective:
    """The loss study's NELBO objective: cosine with t ~ U(t(sigma_min), 1) under the preset's name."""
    obj = get_objective(f"cosine-{target}-nelbo")
    return obj.with_(time_dist=UniformT(float(obj.process.t_of_sigma(torch.tensor(sigma_min))), 1.0))


def modified_objectives() -> list[Objective]:
    ramp = torch.linspace(0.999, 0.01, 50, dtype=torch.float64)
    return [loss_study_objective(),
            get_objective("vp-x0-simple").with_(time_dist=UniformT(0.01, 0.7)),
            get_objective("ddpm").with_(process=Discrete(torch.cumprod(ramp, 0), "ramp")),
            get_objective("iddpm").with_(time_dist=DiscreteUniformT(500))]


def assert_same_objective(a: Objective, b: Objective) -> None:
    """Same name, target, lambda(sigma) on a grid and p: density on the grid, or the atoms."""
    assert (a.name, a.target, a.is_discrete) == (b.name, b.target, b.is_discrete)
    torch.testing.assert_close(a.x0_weight(SIGMA), b.x0_weight(SIGMA), rtol=0, atol=0, equal_nan=True)
    if a.is_discrete:
        torch.testing.assert_close(a.atoms(), b.atoms(), rtol=0, atol=0)
    else:
        ls = torch.log(SIGMA)
        torch.testing.assert_close(a.log_density(ls), b.log_density(ls), rtol=0, atol=0, equal_nan=True)


def reload_json(obj: Objective) -> Objective:
    return Objective.from_dict(json.loads(json.dumps(obj.to_dict())))


@pytest.mark.parametrize("name", objective_names() + COMBINATIONS)
def test_every_named_objective_round_trips(name):
    obj = get_objective(name)
    back = reload_json(obj)
    assert back.to_dict() == obj.to_dict()
    assert_same_objective(obj, back)


@pytest.mark.parametrize("index", range(4))
def test_modified_objectives_round_trip_where_the_name_would_not(index):
    obj = modified_objectives()[index]
    back = reload_json(obj)
    assert_same_objective(obj, back)
    # The name alone gives the preset's distribution: the bug this format fixes.
    named = get_objective(obj.name)
    differs = (obj.is_discrete and not torch.equal(named.atoms(), obj.atoms())) or \
        (not obj.is_discrete and not torch.equal(named.log_density(torch.log(SIGMA)),
                                                 obj.log_density(torch.log(SIGMA))))
    assert differs


def test_discrete_processes_store_their_recipe_or_alpha_bar():
    ddpm = {"kind": "ddpm", "beta_start": 1e-4, "beta_end": 0.02, "steps": 1000}
    assert get_objective("ddpm").to_dict()["process"] == ddpm
    assert get_objective("iddpm").to_dict()["process"]["kind"] == "iddpm"
    custom = modified_objectives()[2].to_dict()["process"]
    assert custom["kind"] == "discrete" and len(custom["alpha_bar"]) == 50 and custom["name"] == "ramp"


def test_bad_saved_objectives_fail_clearly():
    good = get_objective("edm").to_dict()
    for bad, match in [({**good, "format": "x"}, "not a saved objective"),
                       ({k: v for k, v in good.items() if k != "time_dist"}, "lacks time_dist"),
                       ({**good, "process": {"kind": "nope"}}, "unknown component kind 'nope'"),
                       ({**good, "process": {"kind": "vp", "beta": 1}}, "bad parameters for component 'vp'"),
                       ({**good, "target": "foo"}, "unknown target")]:
        with pytest.raises(ValueError, match=match):
            Objective.from_dict(bad)


def test_the_registry_takes_new_components_without_edits():
    from dataclasses import dataclass

    @register_component("test_power_t")
    @dataclass(frozen=True)
    class PowerT(TimeDistribution):  # t = u^k
        k: float = 2.0

        def sample(self, n, generator=None):
            return torch.rand(n, generator=generator, dtype=torch.float64) ** self.k

        def cdf(self, t):
            return torch.as_tensor(t, dtype=torch.float64).clamp(0, 1) ** (1 / self.k)

        def log_density(self, t):
            t = torch.as_tensor(t, dtype=torch.float64)
            return math.log(1 / self.k) + (1 / self.k - 1) * torch.log(t)

    try:
        assert isinstance(PowerT(), Component) and PowerT.kind == "test_power_t"
        obj = get_objective("cosine-x0-nelbo").with_(time_dist=PowerT(3.0))
        back = reload_json(obj)
        assert back.time_dist == PowerT(3.0)
        assert_same_objective(obj, back)
        with pytest.raises(ValueError, match="already registered"):
            register_component("test_power_t")(UniformT)
        assert component_from_dict("simple") == Simple()  # weights without parameters are saved by name
    finally:
        COMPONENTS.pop("test_power_t")


def test_saved_objectives_are_plain_data():
    def walk(x):
        if isinstance(x, dict):
            return all(isinstance(k, str) and walk(v) for k, v in x.items())
        if isinstance(x, list):
            return all(walk(v) for v in x)
        return x is None or type(x) in (bool, int, float, str)

    for obj in [get_objective(n) for n in objective_names()] + modified_objectives():
        assert walk(obj.to_dict())


@pytest.mark.parametrize("name", objective_names())
def test_a_checkpoint_reloads_every_preset(tmp_path, name):
    x = 0.5 * torch.randn(32, 2, generator=torch.Generator().manual_seed(2))
    trainer = Trainer(x, name, TINY, TrainConfig(steps=1, batch_size=8))
    trainer.run(progress=False)
    ckpt = load_checkpoint(trainer.save(tmp_path / "checkpoint.pt"))
    assert isinstance(ckpt.state["objective"], dict)
    assert_same_objective(get_objective(name), ckpt.objective)


@pytest.mark.parametrize("index", [0, 2])
def test_a_checkpoint_reloads_a_modified_objective(tmp_path, index):
    obj = modified_objectives()[index]
    x = 0.5 * torch.randn(128, 2, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(steps=3, batch_size=16, log_every=3, checkpoint_every=3)
    trained = train(x, obj, TINY, config, out=tmp_path, progress=False)
    ckpt = load_checkpoint(tmp_path)  # torch.load(weights_only=True) inside
    assert ckpt.objective_name == obj.name
    assert_same_objective(obj, ckpt.objective)
    assert_same_objective(obj, ckpt.denoiser().objective)
    sigma = torch.full((4,), 0.7, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(ckpt.denoiser()(x[:4], sigma), trained.denoiser()(x[:4], sigma))
    # Resuming under the preset of the same name is refused: its p(sigma) differs.
    with pytest.raises(ValueError, match="differs"):
        Trainer(x, get_objective(obj.name), TINY, config, out=tmp_path).load_state(ckpt)
    resumed = Trainer(x, obj, TINY, TrainConfig(steps=4, batch_size=16, log_every=3, checkpoint_every=3),
                      out=tmp_path)
    resumed.load_state(ckpt)
    assert resumed.step == 3


def test_a_checkpoint_that_stores_only_a_name_is_refused_with_what_changed(tmp_path):
    x = 0.5 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    trainer = Trainer(x, "flow", TINY, TrainConfig(steps=2, batch_size=8))
    trainer.run(progress=False)
    state = trainer.state_dict()
    state["objective"] = "flow"  # as written before objectives were saved as data
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(InputError, match="only the name 'flow' is stored") as err:
        load_checkpoint(tmp_path)
    assert len(str(err.value).splitlines()) == 1
    state["objective"] = {"format": "lossfloor-objective-1", "name": "flow"}
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="no usable objective"):
        load_checkpoint(tmp_path)


def _default_components():
    import lossfloor.train.schedules  # noqa: F401  (registers the schedules' weights and densities)

    for kind, factory in sorted(COMPONENTS.items()):
        try:
            yield pytest.param(kind, factory(), id=kind)
        except TypeError:  # needs arguments (a process, a curve, alpha_bar): covered by its own tests
            continue


@pytest.mark.parametrize("kind,component", list(_default_components()))
def test_every_registered_component_round_trips_as_plain_data(kind, component):
    saved = json.loads(json.dumps(component.to_dict()))
    assert (saved if kind in NAMED_KINDS else saved["kind"]) == kind
    assert component_from_dict(saved).to_dict() == saved
