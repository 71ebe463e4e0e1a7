"""Every JSON file lossfloor writes is strict JSON (issue 20): NaN and infinities are written as null."""

import json

import numpy as np
import pytest

from lossfloor.app.cli import main


def _strict(path):
    def refuse(name):
        raise AssertionError(f"{path}: {name} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_curve_that_never_reaches_one_percent_writes_critical_sigma_null(tmp_path, capsys):
    out = tmp_path / "est"
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", "--data", "ring", "--n", "64", "--sigmas", "0.0001,0.0002", "--queries", "4",
              "--no-progress", "--out", str(out)])
    assert exit_info.value.code == 0
    assert _strict(out / "optimal_loss.json")["critical_sigma"] is None
    assert "none on this grid" in capsys.readouterr().out


def test_uint16_npz_data_writes_strict_json(tmp_path, capsys):
    """The issue's case: uint16 arrays (kept as given, variance ~3e8) never reach 1% of V on the grid."""
    data, out = tmp_path / "u16.npz", tmp_path / "est"
    np.savez(data, x=np.random.default_rng(0).integers(0, 65535, (40, 3)).astype(np.uint16))
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", "--data", str(data), "--queries", "4", "--num-sigmas", "8", "--no-progress",
              "--out", str(out)])
    assert exit_info.value.code == 0
    doc = _strict(out / "optimal_loss.json")
    assert doc["critical_sigma"] is None and doc["scaling"]["input_dtype"] == "uint16"
