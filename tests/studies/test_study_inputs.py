"""Studies' own files and options (issue 20): caches through the safe loader, damaged cells named and
recomputed, strict JSON, every option and --out checked before anything is written."""

import json
import math

import pytest
import torch

from lossfloor.app.cli import main
from lossfloor.core.errors import InputError
from lossfloor.core.files import json_text
from lossfloor.data.load import load_dataset
from lossfloor.studies import common


class Payload:
    """Unpickling this runs code: it would create `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", n=40), load_dataset("digits", split="test", n=20)


def test_a_crafted_classifier_cache_is_refused_without_running_code(tmp_path, digits):
    marker, path = tmp_path / "ran", tmp_path / "classifier.pt"
    torch.save({"net": Payload(marker), "classes": 10, "accuracy": 0.5}, path)
    with pytest.raises(InputError, match="classifier.pt: not a classifier cache"):
        common.cached_classifier(path, *digits, steps=1)
    assert not marker.exists()


def test_a_classifier_cache_of_the_wrong_shape_is_named(tmp_path, digits):
    path = tmp_path / "classifier.pt"
    torch.save({"net": {"w": torch.zeros(2)}, "classes": 10, "accuracy": 0.5}, path)
    with pytest.raises(InputError, match="classifier.pt .*delete it to retrain"):
        common.cached_classifier(path, *digits, steps=1)
    torch.save({"net": {}, "classes": "ten", "accuracy": 0.5}, path)
    with pytest.raises(InputError, match="field 'classes'"):
        common.cached_classifier(path, *digits, steps=1)


def test_a_good_classifier_cache_is_reused(tmp_path, digits):
    path = tmp_path / "classifier.pt"
    net, acc = common.cached_classifier(path, *digits, steps=2)
    again, acc2 = common.cached_classifier(path, *digits, steps=2)
    assert acc == acc2 and all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                                  again.state_dict().values(), strict=True))


@pytest.mark.parametrize("content", ['{"a": 1, "b": "trunc', "[1, 2]", "", "null"])
def test_a_damaged_cell_is_named_and_recomputed(tmp_path, content):
    path = tmp_path / "cells" / "c.json"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.warns(UserWarning, match=r"c\.json.*recomputing"):
        results = common.run_cells(["c"], lambda c: tmp_path / "cells" / f"{c}.json", lambda c: {"x": 1.0},
                                   progress=False)
    assert results == [{"x": 1.0}] and json.loads(path.read_text()) == {"x": 1.0}


def test_json_is_strict_nan_is_null(tmp_path):
    assert json_text({"a": math.nan, "b": [math.inf, 1.5, (-math.inf,)]}) == \
        '{"a": null, "b": [null, 1.5, [null]]}'
    common.write_json(tmp_path / "x.json", {"critical_sigma": math.nan})
    assert json.loads((tmp_path / "x.json").read_text(), parse_constant=_refuse) == {"critical_sigma": None}


def _refuse(name):
    raise AssertionError(f"{name} is not JSON")
