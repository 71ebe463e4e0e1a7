"""The one image reader (issue 20): only the listed formats, never an external program; 16-bit images read
exactly or refused in one line."""

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from lossfloor.app.cli import main
from lossfloor.core.errors import InputError
from lossfloor.data import images
from lossfloor.data.load import load_dataset

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 setgray 0 0 8 8 rectfill\nshowpage\n%%EOF\n"


@pytest.fixture
def fake_gs(tmp_path, monkeypatch):
    """A `gs` first on PATH that records every call (and renders nothing); Pillow's cached Ghostscript
    lookup is reset so it would find it."""
    bin_dir, log = tmp_path / "bin", tmp_path / "gs_calls.log"
    bin_dir.mkdir()
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\necho \"gs $*\" >> {log}\nexit 0\n")
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None, raising=False)
    opened = []
    original = EpsImagePlugin.EpsImageFile._open

    def recording_open(self):
        opened.append(self.fp)
        return original(self)

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", recording_open)
    return log, opened


def _folder_with_eps(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "fine.png")
    (folder / "evil.png").write_bytes(EPS)
    return folder


def test_an_eps_file_named_png_is_refused_without_starting_a_program(tmp_path, fake_gs, capsys):
    log, opened = fake_gs
    folder = _folder_with_eps(tmp_path)
    with pytest.raises(InputError, match="evil.png: not a readable image"):
        load_dataset(str(folder))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", "--data", str(folder), "--sigmas", "0.1,1", "--queries", "2", "--no-progress",
              "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "evil.png" in err
    assert not out.exists()
    assert not log.exists(), log.read_text()  # Ghostscript (the fake) never started
    assert opened == []  # Pillow never reached its EPS plugin


def test_the_reader_lists_no_format_that_runs_a_program():
    assert "EPS" not in images.IMAGE_FORMATS
    assert set(images.IMAGE_FORMATS) <= {"PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"}


def _png16(path, pixels: np.ndarray) -> None:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour): greyscale (H, W) or RGB (H, W, 3)."""
    h, w = pixels.shape[:2]
    colour = 2 if pixels.ndim == 3 else 0
    raw = b"".join(b"\x00" + pixels[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_greyscale_pngs_keep_their_16_bits_and_one_channel(tmp_path):
    folder = tmp_path / "g16"
    folder.mkdir()
    pixels = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    _png16(folder / "a.png", pixels)
    _png16(folder / "b.png", 65535 - pixels)
    data = load_dataset(str(folder))
    assert tuple(data.shape) == (1, 8, 8)  # one channel, not three
    expected = np.stack([pixels, 65535 - pixels])[:, None] / 32767.5 - 1
    np.testing.assert_allclose(data.x.numpy(), expected, atol=1e-6)  # not clipped at 255
    assert data.scaling["input_range"] == [0, 65535] and data.x.max() == 1.0


@pytest.mark.parametrize("make, phrase", [
    (lambda p: _png16(p / "c.png", np.random.default_rng(0).integers(0, 65536, (8, 8, 3))), "16-bit colour"),
    (lambda p: Image.fromarray(np.ones((8, 8), np.float32)).save(p / "f.tif"), "floating-point"),
    (lambda p: Image.fromarray(np.ones((8, 8), np.int32)).save(p / "i.tif"), "32-bit integer"),
    (lambda p: (_png16(p / "a.png", np.zeros((8, 8), np.uint16)),
                Image.fromarray(np.zeros((8, 8), np.uint8)).save(p / "b.png")), "bit depth"),
])
def test_images_that_would_be_read_wrongly_are_refused(tmp_path, make, phrase):
    folder = tmp_path / "imgs"
    folder.mkdir()
    make(folder)
    with pytest.raises(InputError, match=phrase):
        load_dataset(str(folder))


@pytest.mark.parametrize("dtype, scale", [(np.float32, 1e30), (np.float64, 1e200), (np.int64, 10**15)])
def test_arrays_too_large_for_the_kernel_are_refused(tmp_path, dtype, scale):
    """float32 squared distances of such data overflow: J* would be NaN (a FloatingPointError traceback)."""
    path = tmp_path / "big.npy"
    np.save(path, (np.random.default_rng(0).normal(size=(20, 3)) * scale).astype(dtype))
    with pytest.raises(InputError, match="big.npy: values up to .* at most 1e\\+12"):
        load_dataset(str(path))
