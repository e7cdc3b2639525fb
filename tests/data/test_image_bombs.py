"""A huge image (a decompression bomb: a tiny PNG declaring 30000 x 30000 pixels) is refused in one line naming
the file and its size, by `predict` and by every reader of image files, before it is decoded."""
from __future__ import annotations

import struct
import sys
import zlib
from unittest import mock

import pytest
from PIL import Image

from medvtab.data.images import MAX_PIXELS, read_image
from medvtab.errors import MedvtabError


def png_bomb(path, width: int, height: int):
    """A valid PNG header declaring ``width x height`` grey pixels, with a few compressed rows of zeros."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    rows = zlib.compress(b"\0" * (width + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [30000, 12000])  # above Pillow's error limit, and in its warning band
def test_read_image_refuses_a_bomb(tmp_path, side):
    path = png_bomb(tmp_path / "bomb.png", side, side)
    assert side * side > MAX_PIXELS
    with pytest.raises(MedvtabError, match=r"bomb\.png: image (refused, too large|of 12000 x 12000 pixels refused)"):
        read_image(path, 28)


def test_predict_refuses_a_bomb_in_one_line(tmp_path, capsys):
    from medvtab import cli

    Image.new("L", (28, 28)).save(tmp_path / "ok.png")
    run = tmp_path / "run"
    with mock.patch.object(sys, "argv", ["medvtab", "train", "--task", "breastmnist", "--method", "linear",
                                         "--train-size", "32", "--epochs", "1", "--out", str(run)]):
        with pytest.raises(SystemExit) as done:
            cli.main()
    assert done.value.code in (0, None)
    capsys.readouterr()
    bomb = png_bomb(tmp_path / "bomb.png", 30000, 30000)
    with mock.patch.object(sys, "argv", ["medvtab", "predict", "--run", str(run), str(bomb)]):
        with pytest.raises(SystemExit) as done:
            cli.main()
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and "bomb.png: image refused, too large" in err, err
