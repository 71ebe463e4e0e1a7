"""`lossfloor diagnose --denoiser FILE.py:FACTORY` and the two validator examples, run as tests."""

import importlib.util
import json
from pathlib import Path

import pytest

from lossfloor.app.cli import main

ROOT = Path(__file__).resolve().parents[2]
EDM_EXAMPLE = ROOT / "examples" / "edm_style_net.py"
KDIFF_EXAMPLE = ROOT / "examples" / "kdiffusion_denoiser.py"


def run_cli(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def example(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def diagnose_args(spec, out, *extra):
    return ["diagnose", "--no-progress", "--denoiser", spec, "--data", "digits", "--levels", "4",
            "--queries", "16", "--out", out, *extra]


def test_diagnose_runs_a_users_factory(tmp_path, capsys):
    args = diagnose_args(f"{EDM_EXAMPLE}:denoiser", tmp_path / "d", "--objective", "edm")
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert "user code" in stdout and "total edm loss (train)" in stdout
    report = json.loads((tmp_path / "d" / "diagnosis.json").read_text())
    assert report["denoiser"].endswith("edm_style_net.py:denoiser") and not report["floor_violation"]
    assert all(g["gap"] > -3 * g["gap_stderr"] for g in report["train"])


@pytest.mark.parametrize("spec, extra, message", [
    (f"{EDM_EXAMPLE}:denoiser", [], "--denoiser needs --objective"),
    (f"{EDM_EXAMPLE}:nothing", ["--objective", "edm"], "defines no function 'nothing'"),
    ("missing.py:denoiser", ["--objective", "edm"], "is not a Python (.py) file"),
    (str(EDM_EXAMPLE), ["--objective", "edm"], "expected FILE.py:FACTORY"),
    (f"{EDM_EXAMPLE}:LinearEDMNet", ["--objective", "edm"], None),  # a class needing an argument: its error
])
def test_bad_denoiser_options(tmp_path, capsys, spec, extra, message):
    if message is None:
        with pytest.raises(TypeError):
            main(diagnose_args(spec, tmp_path / "d", *extra))
        return
    code, _, err = run_cli(diagnose_args(spec, tmp_path / "d", *extra), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "d").exists()


def test_objective_only_with_denoiser(tmp_path, capsys):
    code, _, err = run_cli(["diagnose", "--checkpoint", tmp_path / "c.pt", "--objective", "edm", "--out",
                            tmp_path / "d"], capsys)
    assert code == 2 and "--objective goes with --denoiser" in err


@pytest.mark.slow
def test_edm_style_example(capsys):
    scalars = example(EDM_EXAMPLE).main(points=64, queries=128)
    assert scalars["floor/excess"] > 0 and scalars["floor_diff/excess"] > 3 * scalars["floor_diff/excess_se"]


@pytest.mark.slow
def test_kdiffusion_example(capsys):
    scalars = example(KDIFF_EXAMPLE).main(points=64, queries=128, steps=90)
    assert scalars["kdiffusion/excess"] > 0 and scalars["eps/excess"] > 0
    assert "kdiffusion_diff/excess_se" in scalars
