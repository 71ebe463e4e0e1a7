"""Fuzz the four commands with invalid option values (hypothesis): exit 2, at most two stderr lines, no
traceback, and nothing created or changed under --out.

The invalid values are drawn per option from its click type: every numeric option carries its range
(`lossfloor.app.options.Integer`, `Real`, `RealList`), and a value is kept only if that type refuses it, so
new options are fuzzed as soon as they are declared.
"""

import shutil
import string
import tempfile
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lossfloor.app.cli import cli, main
from lossfloor.app.options import Integer, Real, RealList

COMMANDS = ("estimate", "train", "sample", "diagnose")
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
RANGED = (Integer, Real, RealList)


def refused(param_type, value: str) -> bool:
    try:
        param_type.convert(value, None, None)
    except click.BadParameter:
        return True
    return False


NUMBERISH = st.one_of(
    st.integers(min_value=-10**30, max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "+Infinity", "1e999", "-1e999", "1e-400", "-0", "0", "",
                     " ", "1,2", "0x10", "1_000", "abc", "--", "2**70", "9" * 40]),
    st.text(max_size=6),
)
WORD = st.text(alphabet=string.ascii_lowercase + string.digits + "-_", max_size=8).map(lambda s: "zz" + s)


def invalid_values(param: click.Parameter):
    """A strategy of strings that `param` (or the command behind it) must refuse."""
    t = param.type
    if isinstance(t, RealList):
        lists = st.lists(NUMBERISH.filter(lambda v: "," not in v), min_size=1, max_size=4).map(",".join)
        return st.one_of(lists, NUMBERISH).filter(lambda v: refused(t, v))
    if isinstance(t, Integer | Real):
        return NUMBERISH.filter(lambda v: refused(t, v))
    if isinstance(t, click.Choice):
        return st.one_of(WORD, st.text(max_size=6)).filter(lambda v: v not in t.choices)
    if param.name in ("data", "objective", "device"):
        special = ["/dev/null", "/nonexistent/zz.npy", "zz.npz", "cuda:99", "meta", "mps", "cuda:-1"]
        return st.one_of(WORD, st.sampled_from(special))
    if param.name in ("checkpoint", "curve", "diffusers", "data_dir"):
        return st.sampled_from(["/nonexistent/zz", "/dev/null", "{sentinel}", "{folder}"])
    return None


def fuzzed_params(command: str) -> list[click.Parameter]:
    return [p for p in cli.commands[command].params if isinstance(p, click.Option) and not p.is_flag
            and p.name != "out" and invalid_values(p) is not None]


def test_every_numeric_option_declares_its_range():
    """Plain click.INT / click.FLOAT would let NaN, infinities and out-of-range values through."""
    for command in COMMANDS:
        for p in cli.commands[command].params:
            if isinstance(p.type, click.types.IntParamType | click.types.FloatParamType):
                assert isinstance(p.type, RANGED), f"{command} --{p.name}: use validation.Integer/Real"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny trained checkpoint and a scratch root (one fresh folder per example)."""
    root = tmp_path_factory.mktemp("fuzz")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    code = run_main(["train", "--data", "ring", "--n", "64", "--model", "mlp", "--width", "8", "--depth", "1",
                     "--steps", "3", "--batch-size", "8", "--no-progress", "--out", str(root / "run")])[0]
    assert code == 0
    yield root
    torch.set_num_threads(threads)


def run_main(args) -> tuple[int, str, str]:
    """`lossfloor ARGS` in process, through the real entry point, with captured output."""
    runner = CliRunner()
    with runner.isolation() as (out, err, _):
        try:
            main(args)
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code
    return code, out.getvalue().decode(errors="replace"), err.getvalue().decode(errors="replace")


def base_args(command: str, root: Path) -> list[str]:
    """Valid, fast arguments; the fuzzed option comes after them (click keeps the last occurrence)."""
    ckpt = str(root / "run" / "checkpoint.pt")
    return {
        "estimate": ["--data", "ring", "--n", "64", "--sigmas", "0.1,1,10", "--queries", "8"],
        "train": ["--data", "ring", "--n", "64", "--model", "mlp", "--width", "8", "--depth", "1",
                  "--steps", "2", "--batch-size", "8"],
        "sample": ["--checkpoint", ckpt, "--n", "4", "--steps", "4"],
        "diagnose": ["--checkpoint", ckpt, "--levels", "3", "--queries", "8"],
    }[command] + ["--no-progress"]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def check_refused(command: str, root: Path, extra: list[str], out_exists: bool) -> None:
    """`lossfloor COMMAND <valid args> EXTRA --out OUT` exits 2 with one or two stderr lines and leaves its
    scratch folder (OUT absent, or a folder holding one file) exactly as it was."""
    case = Path(tempfile.mkdtemp(dir=root))
    try:
        (case / "sentinel.txt").write_text("5\n")  # neither a checkpoint nor a curve
        extra = [e.replace("{sentinel}", str(case / "sentinel.txt")).replace("{folder}", str(case))
                 for e in extra]
        out = case / "out"
        if out_exists:
            out.mkdir()
            (out / "keep.txt").write_text("keep me\n")
        target = out / "samples.png" if command == "sample" else out
        before = snapshot(case)
        code, _, stderr = run_main([command, *base_args(command, root), *extra, "--out", str(target)])
        context = f"{command} {extra}: exit {code}, stderr {stderr!r}"
        assert code == 2, context
        assert 1 <= len(stderr.strip().splitlines()) <= 2 and "Traceback" not in stderr, context
        assert snapshot(case) == before, context
    finally:
        shutil.rmtree(case, ignore_errors=True)


def option_and_value(command: str):
    params = fuzzed_params(command)
    return st.sampled_from(params).flatmap(
        lambda p: st.tuples(st.just(p.opts[0]), invalid_values(p), st.booleans()))


@pytest.mark.parametrize("command", COMMANDS)
def test_fuzz_invalid_option_values(workspace, command):
    @FUZZ
    @given(option_and_value(command))
    def fuzz(case):
        option, value, out_exists = case
        check_refused(command, workspace, [option, value], out_exists)

    fuzz()


# Values that parse but are refused further on: still exit 2 and nothing written.
COMBINATIONS = {
    "estimate": [
        ["--sigmas", "0.1,1,10", "--sigma-min", "0.01"],
        ["--sigma-min", "5", "--sigma-max", "1"],
        ["--data", "digits", "--n", "100000"],
        ["--queries", "8", "--queries-per-point", "2"],
        ["--subset", "10"],
        ["--estimator", "dol", "--subset", "1000"],
        ["--estimator", "snis", "--C", "2"],
        ["--class-conditional", "--data", "gaussian"],
        ["--out-of-core"],
        ["--objective", "edm-x0-zz"],
        ["--flip"],
    ],
    "train": [
        ["--model", "unet"],
        ["--data", "digits", "--n", "1000000"],
        ["--curve", "/nonexistent.json"],
        ["--resume", "--force"],
        ["--flip"],
        ["--data", "digits", "--model", "mlp", "--n", "10", "--data-dir", "/"],
    ],
    "sample": [
        ["--sigma-min", "5", "--sigma-max", "1"],
    ],
    "diagnose": [
        ["--sigma-min", "5", "--sigma-max", "1"],
        ["--data", "digits", "--n", "20"],
        ["--curve", "{sentinel}"],
        ["--data", "digits", "--n", "100000"],
        ["--n", "10"],
    ],
}


@pytest.mark.parametrize("command, extra", [(c, e) for c, es in COMBINATIONS.items() for e in es],
                         ids=[f"{c}:{' '.join(e)}" for c, es in COMBINATIONS.items() for e in es])
@pytest.mark.parametrize("out_exists", [False, True])
def test_refused_combinations(workspace, command, extra, out_exists):
    check_refused(command, workspace, extra, out_exists)
