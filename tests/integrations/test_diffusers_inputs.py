"""Bad diffusers folders (issue 20): one line naming the file and field, exit 2, nothing written, no
diffusers log lines; weights loaded strictly."""

import json
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers",
                                reason="diffusers is not installed: pip install 'lossfloor[diffusers]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from lossfloor.app.cli import main  # noqa: E402
from lossfloor.integrations import diffusers as lfd  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny DDPM pipeline folder (unet/ + scheduler/) for 1x8x8 images."""
    root = tmp_path_factory.mktemp("pipe")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2)
    unet.save_pretrained(root / "unet")
    diffusers.DDPMScheduler(prediction_type="v_prediction").save_pretrained(root / "scheduler")
    return root


@pytest.fixture
def copy(folder, tmp_path):
    target = tmp_path / "pipe"
    shutil.copytree(folder, target)
    return target


def diagnose(path, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["diagnose", "--diffusers", str(path), "--data", "digits", "--levels", "3", "--queries", "8",
              "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    return exit_info.value.code, err, out


def assert_refused(path, tmp_path, capsys, *phrases):
    code, err, out = diagnose(path, tmp_path, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    assert not out.exists()


def edit_json(path, change):
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(change(doc)))


@pytest.mark.parametrize("which", ["scheduler/scheduler_config.json", "unet/config.json"])
@pytest.mark.parametrize("content", ["[1, 2]", "null", '"text"', "{}", '{"_class_name": 5}'])
def test_a_config_that_is_not_an_object_naming_its_class_is_refused(copy, tmp_path, capsys, which, content):
    (copy / which).write_text(content)
    assert_refused(copy, tmp_path, capsys, which.split("/")[-1])


@pytest.mark.parametrize("change, phrases", [
    (lambda c: {**c, "_class_name": "SchedulerMixin"}, ["scheduler class 'SchedulerMixin'"]),
    (lambda c: {**c, "num_train_timesteps": 0}, ["num_train_timesteps", "<= 100000"]),
    (lambda c: {**c, "num_train_timesteps": 10**13}, ["num_train_timesteps"]),
    (lambda c: {**c, "num_train_timesteps": 1e13}, ["num_train_timesteps"]),
    (lambda c: {**c, "num_train_timesteps": 10**9}, ["num_train_timesteps"]),
    (lambda c: {**c, "num_train_timesteps": True}, ["num_train_timesteps"]),
    (lambda c: {**c, "num_train_timesteps": 2, "rescale_betas_zero_snr": True},
     ["num_train_timesteps", ">= 3"]),
    (lambda c: {**c, "beta_end": -1}, ["beta_end"]),
    (lambda c: {**c, "beta_start": 0.5, "beta_end": 0.1}, ["beta_start"]),
    (lambda c: {**c, "trained_betas": [0.1, 0.2]}, ["trained_betas"]),
    (lambda c: {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": -1}, ["shift", "> 0"]),
    (lambda c: {"_class_name": "EDMEulerScheduler", "sigma_data": 0}, ["sigma_data"]),
])
def test_scheduler_configs_are_checked_before_anything_is_built(copy, tmp_path, capsys, change, phrases):
    edit_json(copy / "scheduler" / "scheduler_config.json", change)
    assert_refused(copy, tmp_path, capsys, "scheduler_config.json", *phrases)


def test_a_huge_unet_config_is_refused_before_allocating(copy, tmp_path, capsys):
    edit_json(copy / "unet" / "config.json", lambda c: {**c, "block_out_channels": [1 << 16, 1 << 16]})
    assert_refused(copy, tmp_path, capsys, "config.json", "parameters")


def test_a_weights_file_missing_a_tensor_is_refused(copy, tmp_path, capsys):
    weights = load_file(copy / "unet" / WEIGHTS)
    dropped = sorted(weights)[0]
    del weights[dropped]
    save_file(weights, copy / "unet" / WEIGHTS)
    assert_refused(copy, tmp_path, capsys, "lacks weights", dropped)


def test_a_weights_file_with_an_extra_tensor_is_refused(copy, tmp_path, capsys):
    weights = load_file(copy / "unet" / WEIGHTS)
    weights["extra.weight"] = torch.zeros(3)
    save_file(weights, copy / "unet" / WEIGHTS)
    assert_refused(copy, tmp_path, capsys, "unexpected weights", "extra.weight")


def test_nan_weights_are_refused_before_out_is_created(copy, tmp_path, capsys):
    weights = load_file(copy / "unet" / WEIGHTS)
    name = sorted(weights)[-1]
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, copy / "unet" / WEIGHTS)
    assert_refused(copy, tmp_path, capsys, "NaN", name)


def test_the_untouched_folder_loads(folder):
    loaded = lfd.load_diffusers(folder)
    assert loaded.objective.target == "v" and len(loaded.objective.atoms()) == 1000


FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SCALARS = st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=5)
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
FIELDS = ["num_train_timesteps", "beta_start", "beta_end", "trained_betas", "prediction_type",
          "rescale_betas_zero_snr", "clip_sample_range", "beta_schedule", "_class_name", "timestep_spacing"]


@given(field=st.sampled_from(FIELDS), value=JSONISH)
@FUZZ
def test_fuzz_scheduler_fields_exit_0_or_2_in_one_line(folder, tmp_path_factory, field, value):
    """Any JSON value in a scheduler field: the objective is mapped, or refused with InputError (exit 2)."""
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    config[field] = value
    try:
        lfd.objective_from_scheduler(config)
    except lfd.InputError as err:
        assert "\n" not in str(err)
