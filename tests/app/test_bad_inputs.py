"""Bad input, class by class (issue 10): one line naming the file or option, exit code 2, nothing written."""

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from lossfloor.app.cli import main
from lossfloor.core.errors import InputError
from lossfloor.data.load import load_dataset
from lossfloor.data.rows import load_rows_dataset


def run_cli(args, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `lossfloor ARGS`, in process."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def assert_one_line_error(code, err, *names):
    """Exit 2 with one stderr line that names every `names` and gives no unsafe advice."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    advice = lines[0].replace(str(names[0]), "") if names else lines[0]
    assert "Traceback" not in err and "allow_pickle" not in advice and "weights_only" not in advice


def estimate_args(data, out, *extra):
    return ["estimate", "--no-progress", "--sigmas", "0.1,1,10", "--queries", "8", "--data", data,
            "--out", out, *extra]


# -- class 1: unreadable data files ----------------------------------------------------------------


def good_npy_bytes(shape=(20, 3)) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).normal(size=shape).astype(np.float32))
    return buf.getvalue()


def good_npz_bytes(compressed=False) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, x=np.random.default_rng(0).normal(size=(40, 3)))
    return buf.getvalue()


def flip_byte(raw: bytes, at: int) -> bytes:
    raw = bytearray(raw)
    raw[at] ^= 0xFF
    return bytes(raw)


def object_npy_bytes() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return buf.getvalue()


def object_npz_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.array([{"a": 1}, None], dtype=object))
    return buf.getvalue()


def text_npz_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x.txt", "hello")
    return buf.getvalue()


BAD_FILES = {  # name -> (bytes, a phrase of the expected message)
    "empty.npy": (b"", "not a .npy file"),
    "text.npy": (b"1,2,3\n4,5,6\n", "not a .npy file"),
    "truncated.npy": (good_npy_bytes()[:150], "truncated"),
    "header-only.npy": (good_npy_bytes()[:128], "truncated"),
    "damaged-header.npy": (good_npy_bytes()[:10] + b"{'descr': nonsense" + b" " * 100 + b"\n", "damaged"),
    "objects.npy": (object_npy_bytes(), "Python objects"),
    "empty.npz": (b"", "not an .npz archive"),
    "truncated.npz": (good_npz_bytes()[:300], "not an .npz archive"),
    "bad-crc.npz": (flip_byte(good_npz_bytes(), 200), "damaged .npz"),
    "bad-deflate.npz": (flip_byte(good_npz_bytes(True), 100), "damaged .npz"),
    "objects.npz": (object_npz_bytes(), "Python objects"),
    "text-member.npz": (text_npz_bytes(), "not a .npy array"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_unreadable_array_files_raise_one_line_naming_the_file(tmp_path, name):
    raw, phrase = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(InputError) as info:
        load_dataset(str(path))
    message = str(info.value)
    assert str(path) in message and phrase in message and "\n" not in message
    assert "allow_pickle" not in message


@pytest.mark.parametrize("name", ["empty.npy", "truncated.npy", "objects.npy", "text.npy"])
def test_unreadable_out_of_core_files(tmp_path, name):
    raw, phrase = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(InputError, match=phrase):
        load_rows_dataset(path)


def png_bytes(size=(6, 6), seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


BAD_IMAGES = {
    "empty.png": b"",
    "text.png": b"this is not an image\n",
    "header-only.png": png_bytes()[:30],
    "truncated.png": png_bytes((64, 64))[:2000],
    "truncated.jpg": jpeg_bytes()[:600],
    "corrupt.png": png_bytes()[:16] + b"\x00" * 40 + png_bytes()[56:],
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_file_in_an_image_folder(tmp_path, name):
    size = (64, 64) if name.startswith("truncated") else (6, 6)
    for i in range(2):
        (tmp_path / f"good{i}.png").write_bytes(png_bytes(size, seed=i))
    (tmp_path / name).write_bytes(BAD_IMAGES[name])
    with pytest.raises(InputError) as info:
        load_dataset(str(tmp_path))
    assert str(tmp_path / name) in str(info.value) and "\n" not in str(info.value)


def test_damaged_idx_files(tmp_path):
    from lossfloor.data.images import read_idx

    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(InputError, match="t10k-images-idx3-ubyte.gz: cannot read"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")


@pytest.mark.parametrize("name", ["empty.npy", "truncated.npy", "text.npy", "objects.npy", "truncated.npz"])
def test_cli_unreadable_data_exit_2(tmp_path, capsys, name):
    """The 0-byte .npy used to exit 130 ('interrupted': click turned numpy's EOFError into an abort)."""
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name][0])
    code, _, err = run_cli(estimate_args(path, tmp_path / "out"), capsys)
    assert_one_line_error(code, err, path)
    assert not (tmp_path / "out").exists()


def test_cli_bad_image_exit_2(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(png_bytes(seed=i))
    (folder / "3.png").write_bytes(b"")
    code, _, err = run_cli(estimate_args(folder, tmp_path / "out"), capsys)
    assert_one_line_error(code, err, folder / "3.png")
    assert not (tmp_path / "out").exists()


# -- class 2: degenerate data -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 0), (0, 3), (4, 2, 0)])
def test_data_without_values(tmp_path, shape):
    np.save(tmp_path / "x.npy", np.zeros(shape, np.float32))
    with pytest.raises(InputError, match="no data"):
        load_dataset(str(tmp_path / "x.npy"))
    with pytest.raises(InputError, match="no data"):
        load_rows_dataset(tmp_path / "x.npy")


@pytest.mark.parametrize("value", [0.0, 0.1, -3.7e5])
def test_zero_variance_data(tmp_path, value):
    np.save(tmp_path / "x.npy", np.full((10, 3), value, np.float32))
    with pytest.raises(InputError, match="all 10 data points are identical"):
        load_dataset(str(tmp_path / "x.npy"))
    with pytest.raises(InputError, match="all 10 data points are identical"):
        load_rows_dataset(tmp_path / "x.npy")
    x = np.full((10, 3), value, np.float32)
    x[9, 2] = np.nextafter(np.float32(value), np.float32(1))  # one value one ulp away: not degenerate
    np.save(tmp_path / "y.npy", x)
    assert len(load_dataset(str(tmp_path / "y.npy"))) == len(load_rows_dataset(tmp_path / "y.npy")) == 10


def test_one_point_is_not_zero_variance_data(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((1, 3), np.float32))
    assert len(load_dataset(str(tmp_path / "x.npy"))) == 1  # training on one point is allowed


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_out_of_core_shard_is_named_before_anything_is_written(tmp_path, capsys, bad):
    shards = tmp_path / "shards"
    shards.mkdir()
    x = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    np.save(shards / "a.npy", x[:30])
    x[47, 1] = bad
    np.save(shards / "b.npy", x[30:])
    with pytest.raises(InputError, match=r"b.npy: data point 17 contains NaN or Inf"):
        load_rows_dataset(shards)
    code, _, err = run_cli(estimate_args(shards, tmp_path / "out", "--out-of-core"), capsys)
    assert_one_line_error(code, err, shards / "b.npy")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["zero-width", "constant", "constant-out-of-core"])
def test_cli_degenerate_data_exit_2_and_write_nothing(tmp_path, capsys, case):
    data = np.zeros((5, 0), np.float32) if case == "zero-width" else np.full((10, 2), 0.5, np.float32)
    np.save(tmp_path / "x.npy", data)
    extra = ["--out-of-core"] if case.endswith("out-of-core") else []
    code, out, err = run_cli(estimate_args(tmp_path / "x.npy", tmp_path / "out", *extra), capsys)
    assert_one_line_error(code, err, tmp_path / "x.npy")
    assert "nan" not in out.lower() and not (tmp_path / "out").exists()


def test_class_conditional_zero_within_class_variance(tmp_path, capsys):
    """Two classes, each one repeated point: the within-class variance (J*'s plateau) is 0."""
    x = np.repeat(np.array([[0.0, 1.0], [2.0, -1.0]], np.float32), 5, axis=0)
    np.savez(tmp_path / "d.npz", x=x, labels=np.repeat([0, 1], 5))
    code, out, err = run_cli(estimate_args(tmp_path / "d.npz", tmp_path / "out", "--class-conditional"),
                             capsys)
    assert_one_line_error(code, err)
    assert "variance" in err and "nan" not in out.lower() and not (tmp_path / "out").exists()


# -- class 5: checkpoints and curve files -----------------------------------------------------------


class WritesAFile:
    """A pickle payload: unpickling it calls open(path, "w"), creating the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    """A real 3-step checkpoint of a tiny MLP on 2-D points, and its state dict."""
    import torch

    return tiny_checkpoint, torch.load(tiny_checkpoint, weights_only=True)


@pytest.mark.parametrize("container", ["raw-pickle", "torch-zip"])
def test_crafted_pickle_checkpoint_is_refused_without_running(tmp_path, container):
    import pickle

    import torch

    from lossfloor.train.checkpoint import load_checkpoint

    # The payload is live: plain unpickling creates the file.
    pickle.loads(pickle.dumps(WritesAFile(tmp_path / "proof")))
    assert (tmp_path / "proof").exists()
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if container == "raw-pickle":
        path.write_bytes(pickle.dumps({"format": "lossfloor-checkpoint-1", "x": WritesAFile(target)}))
    else:
        torch.save({"format": "lossfloor-checkpoint-1", "x": WritesAFile(target)}, path)
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert not target.exists()
    assert str(path) in message and "\n" not in message
    advice = message.replace(str(path), "")
    assert "weights_only" not in advice and "trust" not in advice and "pickle" not in advice


def damaged(state: dict, **changes) -> dict:
    """A copy of `state` with keys replaced (or removed where the value is ...)."""
    out = dict(state)
    for key, value in changes.items():
        if value is ...:
            del out[key]
        else:
            out[key] = value
    return out


def _bad_checkpoints(state):
    import torch

    half = {k: v[..., :1] if v.ndim else v for k, v in state["ema"].items()}
    return {
        "no-ema": (damaged(state, ema=...), "field 'ema'"),
        "no-weights": (damaged(state, net=..., ema=...), "field 'net'"),
        "ema-not-a-dict": (damaged(state, ema=[1, 2]), "field 'ema'"),
        "ema-wrong-shapes": (damaged(state, ema=half), "field 'ema'"),
        "ema-missing-tensor": (damaged(state, ema=dict(list(state["ema"].items())[1:])), "field 'ema'"),
        "nan-weights": (damaged(state, net={k: v * float("nan") for k, v in state["net"].items()}),
                        "field 'net."),
        "step-string": (damaged(state, step="7"), "field 'step'"),
        "negative-step": (damaged(state, step=-1), "field 'step'"),
        "no-model": (damaged(state, model=...), "field 'model'"),
        "width-negative": (damaged(state, model={**state["model"], "width": -1}), "field 'model.width'"),
        "unknown-model": (damaged(state, model={**state["model"], "kind": "nope"}), "field 'model'"),
        "other-format": (damaged(state, format="something-else"), "field 'format'"),
        "generator-float": (damaged(state, generator=torch.zeros(3)), "field 'generator'"),
        "not-a-dict": ([1, 2, 3], "expected a lossfloor checkpoint"),
        "a-number": (5, "expected a lossfloor checkpoint"),
    }


@pytest.mark.parametrize("case", ["no-ema", "no-weights", "ema-not-a-dict", "ema-wrong-shapes",
                                  "ema-missing-tensor", "nan-weights", "step-string", "negative-step",
                                  "no-model", "width-negative", "unknown-model", "other-format",
                                  "generator-float", "not-a-dict", "a-number"])
def test_checkpoint_schema_names_the_file_and_field(tmp_path, checkpoint, case):
    import torch

    from lossfloor.train.checkpoint import load_checkpoint

    state, phrase = _bad_checkpoints(checkpoint[1])[case]
    path = tmp_path / f"{case}.pt"
    torch.save(state, path)
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and phrase in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"", b"{}", b'{"format": "lossfloor-checkpoint-1"}', b"\x00" * 64,
                                     "truncated"])
def test_foreign_or_damaged_checkpoint_files(tmp_path, checkpoint, content):
    from lossfloor.train.checkpoint import load_checkpoint

    raw = checkpoint[0].read_bytes()
    path = tmp_path / "c.pt"
    path.write_bytes(raw[:len(raw) // 2] if content == "truncated" else content)
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert "weights_only" not in str(info.value)


def test_good_checkpoint_still_loads(checkpoint):
    from lossfloor.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint[0])
    assert ckpt.step == 3 and ckpt.denoiser() is not None


@pytest.mark.parametrize("case", ["evil", "no-ema", "truncated"])
def test_cli_sample_and_diagnose_refuse_bad_checkpoints(tmp_path, capsys, checkpoint, case):
    import pickle

    import torch

    path = tmp_path / "bad.pt"
    if case == "evil":
        path.write_bytes(pickle.dumps(WritesAFile(tmp_path / "pwned")))
    elif case == "no-ema":
        torch.save(damaged(checkpoint[1], ema=...), path)
    else:
        path.write_bytes(checkpoint[0].read_bytes()[:500])
    out = tmp_path / "samples" / "s.png"
    code, _, err = run_cli(["sample", "--checkpoint", path, "--n", "4", "--steps", "4", "--out", out], capsys)
    assert_one_line_error(code, err, path)
    assert not (tmp_path / "samples").exists() and not (tmp_path / "pwned").exists()
    code, _, err = run_cli(["diagnose", "--checkpoint", path, "--out", tmp_path / "diag"], capsys)
    assert_one_line_error(code, err, path)
    assert not (tmp_path / "diag").exists() and not (tmp_path / "pwned").exists()


CURVE = {"sigma": [0.1, 1.0, 10.0], "loss": [0.01, 0.3, 0.9], "stderr": [0.001, 0.01, 0.01],
         "data_variance": 1.0, "n": 100, "dim": 2, "settings": {}, "fingerprint": "abc"}


@pytest.mark.parametrize("doc, phrase", [
    (5, "expected an optimal-loss curve"),
    (None, "expected an optimal-loss curve"),
    ([1, 2], "expected an optimal-loss curve"),
    ("text", "expected an optimal-loss curve"),
    ({**CURVE, "sigma": "0.1,1,10"}, "field 'sigma'"),
    ({**CURVE, "sigma": [0.1, -1.0, 10.0]}, "field 'sigma[1]'"),
    ({**CURVE, "sigma": [0.1, 0.1, 10.0]}, "distinct"),
    ({**CURVE, "sigma": []}, "field 'sigma'"),
    ({**CURVE, "loss": [0.01, "x", 0.9]}, "field 'loss[1]'"),
    ({**CURVE, "loss": [0.01, 0.3]}, "field 'loss'"),
    ({**CURVE, "stderr": [0.001, float("nan"), 0.01]}, "field 'stderr[1]'"),
    ({**CURVE, "stderr": [0.001, -0.01, 0.01]}, "field 'stderr[1]'"),
    ({**CURVE, "data_variance": 0}, "field 'data_variance'"),
    ({**CURVE, "data_variance": None}, "field 'data_variance'"),
    ({**CURVE, "n": 2.5}, "field 'n'"),
    ({**CURVE, "dim": True}, "field 'dim'"),
    ({**CURVE, "settings": 3}, "field 'settings'"),
    ({**CURVE, "fingerprint": 7}, "field 'fingerprint'"),
    ({k: v for k, v in CURVE.items() if k != "loss"}, "field 'loss'"),
])
def test_curve_json_schema(tmp_path, doc, phrase):
    import json

    from lossfloor.floor.curve import OptimalLossCurve

    path = tmp_path / "curve.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError) as info:
        OptimalLossCurve.load(path)
    assert str(path) in str(info.value) and phrase in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe\x00", b"[" * 100000])
def test_curve_file_that_is_not_json(tmp_path, raw):
    from lossfloor.floor.curve import OptimalLossCurve

    (tmp_path / "c.json").write_bytes(raw)
    with pytest.raises(InputError, match="c.json: not a curve JSON file"):
        OptimalLossCurve.load(tmp_path / "c.json")


def test_good_curve_round_trips(tmp_path):
    from lossfloor.floor.curve import OptimalLossCurve

    curve = OptimalLossCurve.from_dict(CURVE)
    curve.save(tmp_path / "c.json")
    again = OptimalLossCurve.load(tmp_path / "c.json")
    assert again.sigma.tolist() == CURVE["sigma"] and again.fingerprint == "abc"
    assert OptimalLossCurve.from_dict({**CURVE, "settings": None, "fingerprint": None}).settings == {}


def test_cli_diagnose_refuses_a_bad_curve(tmp_path, capsys, checkpoint):
    (tmp_path / "c.json").write_text("5")
    code, _, err = run_cli(["diagnose", "--checkpoint", checkpoint[0], "--curve", tmp_path / "c.json",
                            "--data", "ring", "--n", "64", "--out", tmp_path / "diag"], capsys)
    assert_one_line_error(code, err, tmp_path / "c.json")
    assert not (tmp_path / "diag").exists()


# -- class 3: non-finite or absurd options (each refused where it is parsed, with its range) ----------

TRAIN_BASE = ["train", "--data", "ring", "--n", "64", "--model", "mlp", "--width", "8", "--depth", "1",
              "--steps", "2", "--batch-size", "8", "--no-progress"]
ESTIMATE_BASE = ["estimate", "--data", "ring", "--n", "64", "--queries", "8", "--no-progress"]


@pytest.mark.parametrize("args, option, allowed", [
    (ESTIMATE_BASE + ["--sigma-min", "1e-300"], "--sigma-min", "1e-08<=x<=100000000.0"),
    (ESTIMATE_BASE + ["--sigma-max", "1e300"], "--sigma-max", "1e-08<=x<=100000000.0"),
    (ESTIMATE_BASE + ["--sigmas", "0.1,1e300"], "--sigmas", "1e-08<=x<=100000000.0"),
    (ESTIMATE_BASE + ["--sigmas", "0.1,nan"], "--sigmas", "finite"),
    (ESTIMATE_BASE + ["--queries-per-point", "inf"], "--queries-per-point", "0<x<=1048576"),
    (ESTIMATE_BASE + ["--estimator", "cdol", "--C", "nan"], "--C", "x>=1"),
    (ESTIMATE_BASE + ["--target-stderr", "-0.1"], "--target-stderr", "0<x<1"),
    (ESTIMATE_BASE + ["--seed", str(2**64)], "--seed", "0<=x<=9223372036854775807"),
    (TRAIN_BASE + ["--lr", "inf"], "--lr", "0<x<=1"),
    (TRAIN_BASE + ["--lr", "nan"], "--lr", "0<x<=1"),
    (TRAIN_BASE + ["--grad-clip", "-1"], "--grad-clip", "x>=0"),
    (TRAIN_BASE + ["--width", "-1"], "--width", "1<=x<=8192"),
    (TRAIN_BASE + ["--depth", "-2"], "--depth", "1<=x<=256"),
    (TRAIN_BASE + ["--warmup", "-5"], "--warmup", "0<=x"),
    (TRAIN_BASE + ["--ema", "1"], "--ema", "0<=x<1"),
    (TRAIN_BASE + ["--seed", "99999999999999999999999"], "--seed", "0<=x<=9223372036854775807"),
    (["sample", "--checkpoint", "x.pt", "--sigma-max", "1e300"], "--sigma-max", "1e-08<=x<=100000000.0"),
    (["sample", "--checkpoint", "x.pt", "--sigma-min", "0"], "--sigma-min", "1e-08<=x<=100000000.0"),
    (["diagnose", "--checkpoint", "x.pt", "--queries", "1"], "--queries", "2<=x<=1048576"),
])
def test_absurd_options_name_the_option_and_range(tmp_path, capsys, args, option, allowed):
    code, _, err = run_cli([*args, "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, option, allowed)
    assert not (tmp_path / "out").exists()


def test_library_configs_refuse_absurd_values():
    from lossfloor.nets.networks import ModelConfig
    from lossfloor.train.trainer import TrainConfig

    for bad in [dict(lr=float("inf")), dict(lr=float("nan")), dict(warmup=-5), dict(grad_clip=-1.0),
                dict(grad_clip=float("nan")), dict(ema=1.0)]:
        with pytest.raises(ValueError):
            TrainConfig(**bad)
    for bad in [dict(width=-1), dict(depth=0)]:
        with pytest.raises(ValueError, match="must be >= 1"):
            ModelConfig("mlp", (2,), **bad)


@pytest.mark.parametrize("sigma_max, sigma_min", [(1e8, 1e-8), (80.0, 1e-8)])
def test_extreme_but_allowed_sigmas_give_finite_samples(tmp_path, capsys, sigma_max, sigma_min):
    """The ends of the allowed range stay finite (the old 1e300 wrote non-finite samples with exit 0)."""
    run = tmp_path / "run"
    assert run_cli([*TRAIN_BASE, "--out", run], capsys)[0] == 0
    out = tmp_path / "s.png"
    code, _, err = run_cli(["sample", "--checkpoint", run, "--n", "8", "--steps", "6", "--npy", "--sigma-max",
                            sigma_max, "--sigma-min", sigma_min, "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    assert np.isfinite(np.load(tmp_path / "s.npy")).all()


def test_non_finite_samples_are_never_written(tmp_path, capsys, monkeypatch):
    import torch

    from lossfloor.app import sample as sample_command

    run = tmp_path / "run"
    assert run_cli([*TRAIN_BASE, "--out", run], capsys)[0] == 0
    monkeypatch.setattr(sample_command, "draw", lambda denoiser, shape, *a, **k: torch.full(shape, torch.nan))
    code, _, err = run_cli(["sample", "--checkpoint", run, "--n", "4", "--npy", "--out", tmp_path / "s.png",
                            "--no-progress"], capsys)
    assert_one_line_error(code, err)
    assert "NaN or Inf" in err and not (tmp_path / "s.png").exists() and not (tmp_path / "s.npy").exists()


# -- class 4: output paths --------------------------------------------------------------------------


def command_args(command, tmp_path):
    return {"estimate": ESTIMATE_BASE, "train": TRAIN_BASE,
            "sample": ["sample", "--checkpoint", tmp_path / "missing.pt", "--no-progress"],
            "diagnose": ["diagnose", "--checkpoint", tmp_path / "missing.pt", "--no-progress"]}[command]


@pytest.mark.parametrize("command", ["estimate", "train", "sample", "diagnose"])
@pytest.mark.parametrize("where", ["out", "parent"])
def test_out_at_a_dangling_symlink(tmp_path, capsys, command, where):
    """Used to pass every check and then fail with FileExistsError."""
    link = tmp_path / ("link.png" if command == "sample" else "link")
    link.symlink_to(tmp_path / "nowhere")
    out = link if where == "out" else link / ("s.png" if command == "sample" else "sub")
    code, _, err = run_cli([*command_args(command, tmp_path), "--out", out], capsys)
    assert_one_line_error(code, err, "--out")
    assert "symbolic link" in err and not (tmp_path / "nowhere").exists()


def test_sample_out_whose_parent_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli([*command_args("sample", tmp_path), "--out", tmp_path / "file" / "s.png"], capsys)
    assert_one_line_error(code, err, "--out", tmp_path / "file")
    assert "is a file" in err


@pytest.mark.parametrize("command", ["estimate", "train", "diagnose"])
def test_out_that_is_a_file(tmp_path, capsys, command):
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli([*command_args(command, tmp_path), "--out", tmp_path / "file"], capsys)
    assert_one_line_error(code, err, "--out")
    assert (tmp_path / "file").read_text() == "x"


def test_sample_into_a_read_only_folder_is_refused_before_sampling(tmp_path, capsys, monkeypatch):
    import os
    import tempfile

    from lossfloor.app import sample as sample_command

    run = tmp_path / "run"
    assert run_cli([*TRAIN_BASE, "--out", run], capsys)[0] == 0
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: make the writability probe meet what a user would
        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(tempfile, "TemporaryFile", denied)
    else:
        folder.chmod(0o555)
    monkeypatch.setattr(sample_command, "draw", lambda *a, **k: pytest.fail("sampled before checking --out"))
    code, _, err = run_cli(["sample", "--checkpoint", run, "--out", folder / "s.png", "--no-progress"],
                           capsys)
    folder.chmod(0o755)
    assert_one_line_error(code, err, "--out", folder)
    assert "cannot write" in err and not list(folder.iterdir())


@pytest.mark.parametrize("args, phrase", [
    (["estimate", "--data", "", "--no-progress"], "--data: empty name"),
    (["estimate", "--data", "ring", "--n", "64", "--device", "meta", "--no-progress"], "expected cpu, cuda"),
    (["train", "--data", "ring", "--n", "64", "--device", "meta", "--no-progress"], "expected cpu, cuda"),
    (["train", "--data", "ring", "--n", "64", "--model", "relu-mlp", "--width", "8192", "--depth", "256",
      "--no-progress"], "at most 268,435,456"),
    (["train", "--data", "digits", "--n", "64", "--model", "unet", "--width", "8192", "--no-progress"],
     "at most 268,435,456"),
])
def test_absurd_sizes_devices_and_names(tmp_path, capsys, args, phrase):
    """A 17-billion-parameter model is refused from its parameter count (meta device), not by running out
    of memory; a meta device used to fail with a traceback after creating --out."""
    code, _, err = run_cli([*args, "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, err)
    assert phrase in err and not (tmp_path / "out").exists()


def test_queries_per_point_beyond_the_query_cap(tmp_path, capsys):
    code, _, err = run_cli(["estimate", "--data", "digits", "--queries-per-point", "1000", "--no-progress",
                            "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "--queries-per-point", "at most 1,048,576")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("error", [InputError("first line\nsecond line"), InputError(""),
                                   OSError(28, "No space left on device")])
def test_entry_point_prints_any_user_error_on_one_line(monkeypatch, capsys, error):
    from lossfloor.app import cli

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(cli, "prepare_estimate", fail)
    code, _, err = run_cli(["estimate"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_an_internal_error_is_not_reported_as_a_user_error(monkeypatch, capsys):
    """A plain ValueError inside lossfloor is a bug: it surfaces with its traceback, not as exit 2."""
    from lossfloor.app import cli

    def fail(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(cli, "prepare_estimate", fail)
    with pytest.raises(ValueError, match="an internal bug"):
        cli.main(["estimate"])
