"""Studies' own files and options (issue 20): caches through the safe loader, damaged cells named and
recomputed, strict JSON, every option and --out checked before anything is written."""

import json
import math
import shutil
import string
import tempfile
from pathlib import Path

import click
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lossfloor.app.cli import cli, main
from lossfloor.app.options import Integer
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


# -- the study commands: every option and --out checked before anything is written ------------------


def check_refused(args, root, out_exists: bool, capsys, *phrases):
    """`lossfloor study ARGS --out OUT`: exit 2, one stderr line, and OUT (absent, or a folder with one
    file) exactly as it was."""
    case = Path(tempfile.mkdtemp(dir=root))
    out = case / "out"
    if out_exists:
        out.mkdir()
        (out / "keep.txt").write_text("keep me\n")
    before = sorted(str(p) for p in case.rglob("*"))
    code, _, err = run_cli(["study", *args, "--no-progress", "--out", out], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (args, err)
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    assert sorted(str(p) for p in case.rglob("*")) == before, args
    shutil.rmtree(case)


STUDY_CASES = [
    (["losses", "--datasets", "ring", "--preset", "quick", "--seeds", "99999999999999999999999"], "--seeds"),
    (["losses", "--datasets", "ring", "--preset", "quick", "--seeds", "-1"], "--seeds"),
    (["losses", "--datasets", "ring", "--preset", "quick", "--seeds", "0,x"], "--seeds"),
    (["diagnose", "--datasets", "digits,fashion-mnist", "--budget", "quick", "--data-dir", "/nonexistent"],
     "Fashion-MNIST"),
    (["scaling", "--preset", "quick", "--seed", str(2**32 - 1)], "--seed"),
    (["scaling", "--preset", "quick", "--device", "cuda:99"], "--device"),
    (["scaling", "--preset", "quick", "--device", "tpu"], "--device"),
    (["schedule", "--preset", "quick", "--schedules", "zz"], "schedule"),
]
if not torch.cuda.is_available():
    STUDY_CASES.append((["scaling", "--preset", "quick", "--device", "cuda"], "CUDA is not available"))


@pytest.mark.parametrize("args, phrase", STUDY_CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in STUDY_CASES])
@pytest.mark.parametrize("out_exists", [False, True])
def test_study_options_are_checked_before_anything_is_written(tmp_path, capsys, args, phrase, out_exists):
    check_refused(args, tmp_path, out_exists, capsys, phrase)


@pytest.mark.parametrize("study", ["losses", "diagnose", "scaling", "schedule"])
def test_a_study_out_that_is_a_file_is_named(tmp_path, capsys, study):
    out = tmp_path / "file.txt"
    out.write_text("x")
    code, _, err = run_cli(["study", study, "--preset" if study != "diagnose" else "--budget", "quick",
                            "--no-progress", "--out", out], capsys)
    assert code == 2 and "--out" in err and "is a file, not a folder" in err and len(err.splitlines()) == 1


FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
NUMBERISH = st.one_of(st.integers(-10**30, 10**30).map(str), st.floats().map(repr),
                      st.sampled_from(["", " ", "nan", "1e999", "-0.5", "0x10", "1_000", ",", "9" * 40]))
WORD = st.text(alphabet=string.ascii_lowercase + string.digits + "-_", max_size=6).map(lambda s: "zz" + s)


def invalid_study_values(param):
    """Strings the study option `param` must refuse (None: not fuzzed)."""
    t = param.type
    if isinstance(t, click.Choice):
        return st.one_of(WORD, st.text(max_size=4)).filter(lambda v: v not in t.choices)
    if isinstance(t, Integer):
        def bad(v):
            try:
                t.convert(v, None, None)
            except click.BadParameter:
                return True
            return False
        return NUMBERISH.filter(bad)
    if param.name == "seeds":
        return st.lists(NUMBERISH, min_size=1, max_size=3).map(",".join).filter(_bad_seed_list)
    if param.name in ("datasets", "targets", "weights", "variants", "objectives", "schedules"):
        return st.lists(WORD, min_size=1, max_size=2).map(",".join)
    if param.name == "device":
        return st.one_of(WORD, st.sampled_from(["cuda:99", "meta", "mps", "cuda:-1", ""]))
    return None


def _bad_seed_list(value: str) -> bool:
    try:
        seeds = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        return True
    return not seeds or any(not 0 <= s < 2**32 for s in seeds)


@pytest.mark.parametrize("study", ["losses", "diagnose", "scaling", "schedule"])
def test_fuzz_study_options(tmp_path, capsys, study):
    command = cli.commands["study"].commands[study]
    params = [p for p in command.params if isinstance(p, click.Option) and not p.is_flag
              and invalid_study_values(p) is not None]
    quick = ["--budget" if study == "diagnose" else "--preset", "quick"]

    @FUZZ
    @given(st.sampled_from(params).flatmap(lambda p: st.tuples(st.just(p.opts[0]), invalid_study_values(p),
                                                               st.booleans())))
    def fuzz(case):
        option, value, out_exists = case
        check_refused([study, *quick, option, value], tmp_path, out_exists, capsys)

    fuzz()
