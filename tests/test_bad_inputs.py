"""Bad input, class by class (issue 10): one line naming the file or option, exit code 2, nothing written."""

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from lossfloor.cli import main
from lossfloor.data import load_dataset
from lossfloor.storage import load_rows_dataset
from lossfloor.validation import InputError


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
    assert "Traceback" not in err and "pickle" not in err.replace("pickled objects", "")
    for name in names:
        assert str(name) in lines[0], (name, lines[0])


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
    from lossfloor.data import read_idx

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
