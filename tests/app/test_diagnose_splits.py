"""diagnose's test split: absent (a .npy, an .npz without x_test) is none; a damaged one is an error."""

import zipfile

import numpy as np
import pytest

from lossfloor.app.cli import main
from lossfloor.app.diagnose import DiagnoseSettings, load_test_split, prepare_diagnose
from lossfloor.core.errors import InputError
from lossfloor.data.load import load_dataset


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    """A 3-step checkpoint of a tiny MLP on 2-D points."""
    return tiny_checkpoint


def _points(seed):
    return np.random.default_rng(seed).standard_normal((64, 2)).astype(np.float32)


def damaged_npz(path):
    """An .npz whose x is fine and whose x_test member is cut short."""
    np.savez(path, x=_points(0), x_test=_points(1))
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", members["x.npy"])
        z.writestr("x_test.npy", members["x_test.npy"][:-100])
    return path


def settings(checkpoint, data, out):
    return DiagnoseSettings(checkpoint=str(checkpoint), data=str(data), out=str(out))


def test_a_damaged_test_split_is_a_one_line_error(checkpoint, tmp_path, capsys):
    data = damaged_npz(tmp_path / "d.npz")
    load_dataset(str(data))  # the training split reads
    with pytest.raises(InputError, match="x_test"):
        load_test_split(lambda: load_dataset(str(data), split="test"))
    with pytest.raises(InputError, match="x_test"):
        prepare_diagnose(settings(checkpoint, data, tmp_path / "diag"))
    with pytest.raises(SystemExit) as exit_info:
        main(["diagnose", "--checkpoint", str(checkpoint), "--data", str(data),
              "--out", str(tmp_path / "diag"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and str(data) in err[0] and "x_test" in err[0], err
    assert not (tmp_path / "diag").exists()


@pytest.mark.parametrize("kind", ["npy", "npz-without-x_test"])
def test_no_test_split_is_none(checkpoint, tmp_path, kind):
    if kind == "npy":
        data = tmp_path / "d.npy"
        np.save(data, _points(0))
    else:
        data = tmp_path / "d.npz"
        np.savez(data, x=_points(0))
    run = prepare_diagnose(settings(checkpoint, data, tmp_path / "diag"))
    assert run.test_set is None and len(run.train_set) == 64


def test_a_test_split_is_loaded(checkpoint, tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, x=_points(0), x_test=_points(1)[:32])
    run = prepare_diagnose(settings(checkpoint, data, tmp_path / "diag"))
    assert run.test_set is not None and len(run.test_set) == 32
