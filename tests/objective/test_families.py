"""Weights and noise densities as one family each: every saved form (today's, the bare weight names, the
kinds from before the merge, the committed result files) loads to the same lambda(sigma) and p(sigma)."""

import json
import math
from pathlib import Path

import pytest
import torch
from tests.train.test_schedules import gaussian_curve

from lossfloor.core.errors import InputError
from lossfloor.objective.components import component_from_dict, component_to_dict
from lossfloor.objective.densities import LogSigmaNormal, NoiseDensity
from lossfloor.objective.legacy import KIND_ALIASES, NAMED_KINDS
from lossfloor.objective.objective import PRESETS, Objective, get_objective, objective_names
from lossfloor.objective.weights import NELBO, WEIGHTS, Simple, Weight
from lossfloor.train.adaptive import LearnedUncertaintyWeight
from lossfloor.train.schedules import apply_schedule

ROOT = Path(__file__).resolve().parents[2]
LS = torch.linspace(-5, 4, 181, dtype=torch.float64)


def assert_same_law(a: Objective, b: Objective, rtol=0.0):
    """Identical lambda and p (and draws) on a grid: atoms for discrete objectives, log sigma otherwise."""
    assert a.is_discrete == b.is_discrete
    if a.is_discrete:
        assert torch.equal(a.atoms(), b.atoms())
        s = a.atoms()
    else:
        s = torch.exp(LS)
        torch.testing.assert_close(a.log_density(LS), b.log_density(LS), rtol=rtol, atol=0)
        torch.testing.assert_close(a.cdf(LS), b.cdf(LS), rtol=rtol, atol=1e-300)
    torch.testing.assert_close(a.x0_weight(s), b.x0_weight(s), rtol=rtol, atol=0)
    gen = [torch.Generator().manual_seed(3) for _ in range(2)]
    torch.testing.assert_close(a.sample_sigma(64, gen[0]), b.sample_sigma(64, gen[1]), rtol=rtol, atol=0)


def test_every_weight_and_density_is_a_registered_class():
    for name in [*objective_names(), "cosine-v-nelbo", "edm-eps-simple"]:
        obj = get_objective(name)
        assert isinstance(obj.weight, Weight) and isinstance(obj.time_dist, NoiseDensity)
        assert component_from_dict(component_to_dict(obj.weight)) == obj.weight
    assert list(WEIGHTS) == list(NAMED_KINDS) == ["simple", "nelbo"]
    assert WEIGHTS["simple"]() == Simple() and WEIGHTS["nelbo"]() == NELBO()
    assert str(Simple()) == "simple" and Simple().to_dict() == "simple"


def test_preset_registry_has_a_factory_and_a_description_per_name():
    assert PRESETS.names() == objective_names()
    for name in PRESETS:
        assert PRESETS[name]().name == name and PRESETS.description(name)
    with pytest.raises(InputError, match="unknown weight"):
        get_objective("cosine-v-huber")


@pytest.mark.parametrize("name", [*objective_names(), "cosine-eps-nelbo", "sd3-v-nelbo", "flow-x0-simple"])
def test_string_weights_load_to_the_weight_classes(name):
    """Every file so far stores "weight": "simple" or "nelbo"; they load to the classes, unchanged."""
    obj = get_objective(name)
    saved = json.loads(json.dumps(obj.to_dict()))
    assert saved["weight"] in ("simple", "nelbo")
    back = Objective.from_dict(saved)
    assert back.weight == obj.weight and back.time_dist == obj.time_dist and back.to_dict() == saved
    assert_same_law(back, obj)


def _old_form(obj: Objective) -> dict:
    """The objective as the code before the merge saved it: the schedules' densities over log sigma with
    their process, SD3's density as "logitnormal" (the presets' "lognormal" and "loguniform" were log t on
    VE, where t is sigma: those are saved as they were)."""
    d = json.loads(json.dumps(obj.to_dict()))
    old = {"lognormal": "log_sigma_normal"} if "+" in obj.name else {}  # a schedule's, on any process
    td = d["time_dist"]
    if obj.name.startswith("sd3") and "+" not in obj.name:
        d["time_dist"] = {"kind": "logitnormal", "mean": td["mean"], "std": td["std"]}
    elif td["kind"] in ("log_sigma_logistic", "log_snr_laplace", "adaptive") or td["kind"] in old:
        d["time_dist"] = {**td, "kind": old.get(td["kind"], td["kind"]), "process": d["process"]}
    return d


SCHEDULED = [("edm", "edm"), ("flow", "edm2"), ("vp", "laplace"), ("flow", "uniform-t"),
             ("cosine", "logit-normal"), ("edm", "edm2-learned"), ("sd3", "min-snr")]


@pytest.mark.parametrize("name", objective_names())
def test_old_kind_names_load_to_the_same_law_per_preset(name):
    obj = get_objective(name)
    assert_same_law(Objective.from_dict(_old_form(obj)), obj)


@pytest.mark.parametrize("base,schedule", SCHEDULED)
def test_old_kind_names_load_to_the_same_law_per_schedule(base, schedule):
    obj = apply_schedule(base, schedule)
    old = _old_form(obj)
    if obj.time_dist != get_objective(base).time_dist:
        assert old["time_dist"]["kind"] in KIND_ALIASES and "process" in old["time_dist"]
    back = Objective.from_dict(old)
    assert back.to_dict() == obj.to_dict()
    assert_same_law(back, obj)


def test_a_learned_weight_over_the_simple_weight_saves_its_base_by_name():
    obj = get_objective("flow").with_(weight=LearnedUncertaintyWeight())
    saved = json.loads(json.dumps(obj.to_dict()))
    assert saved["weight"]["base"] == "simple"
    assert_same_law(Objective.from_dict(saved), obj)
    assert Objective.from_dict(saved).weight.base == Simple()


def test_old_adaptive_density_drops_its_process():
    obj = apply_schedule("flow", "optimal-loss", gaussian_curve())
    old = _old_form(obj)
    assert old["time_dist"]["process"] == {"kind": "flow"}
    assert_same_law(Objective.from_dict(old), obj)


def test_logit_normal_off_flow_is_refused_in_one_line():
    saved = {**_old_form(get_objective("sd3")), "process": {"kind": "ve"}}
    with pytest.raises(InputError, match="logit-normal") as err:
        Objective.from_dict(saved)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="unknown named component"):
        component_from_dict("huber")


def test_the_edm_schedule_and_the_edm_preset_are_one_density():
    edm = LogSigmaNormal(-1.2, 1.2)
    assert apply_schedule("edm", "edm").time_dist == get_objective("edm").time_dist == edm
    assert get_objective("sd3").time_dist == LogSigmaNormal(0.0, 1.0)
    assert get_objective("edm").time_dist.to_dict() == {"kind": "lognormal", "mean": -1.2, "std": 1.2}


def _saved_objectives():
    for path in sorted((ROOT / "results").rglob("*.json")):
        text = path.read_text()
        if '"format": "lossfloor-objective-1"' in text:
            yield from _walk(json.loads(text), str(path.relative_to(ROOT)))


def _walk(x, where):
    if isinstance(x, dict):
        if x.get("format") == "lossfloor-objective-1":
            yield pytest.param(x, id=where)
        for k, v in x.items():
            yield from _walk(v, f"{where}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _walk(v, f"{where}[{i}]")


SAVED = list(_saved_objectives())


def test_the_results_hold_saved_objectives():
    assert len(SAVED) >= 5


@pytest.mark.parametrize("saved", SAVED)
def test_every_committed_result_objective_loads_and_saves_the_same_bytes(saved):
    obj = Objective.from_dict(saved)
    assert obj.to_dict() == saved
    if saved["name"] in PRESETS:
        assert_same_law(obj, get_objective(saved["name"]))
    assert math.isfinite(float(obj.x0_weight(torch.tensor([0.5])).item()))
