"""Images (medvtab.data.images): decoding to grey or RGB, resizing, scaling to uint8, grey promoted where mixed."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medvtab.data.images import grey_to_rgb_if_mixed, minmax_to_uint8, read_image, resize, scale_to_uint8
from medvtab.errors import MedvtabError


def test_read_image_keeps_grey_one_channel_and_colour_three(tmp_path):
    rng = np.random.default_rng(0)
    grey, colour = rng.integers(0, 256, (9, 9), dtype=np.uint8), rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(colour).save(tmp_path / "c.png")
    assert np.array_equal(read_image(tmp_path / "g.png", 9), grey[..., None])  # same size: pixels untouched
    assert np.array_equal(read_image(tmp_path / "c.png", 9), colour)
    assert read_image(tmp_path / "c.png", 4).shape == (4, 4, 3)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(MedvtabError, match="bad.png: unreadable image"):
        read_image(tmp_path / "bad.png", 4)


def test_resize_and_scaling():
    assert resize(np.full((3, 5), 7, np.uint8), 4).shape == (4, 4, 1)
    assert scale_to_uint8(np.array([-1.0, 0.0, 5.0, 10.0, 11.0]), 0, 10).tolist() == [0, 0, 128, 255, 255]
    assert scale_to_uint8(np.array([3.0]), 5, 5).tolist() == [0]
    assert minmax_to_uint8(np.array([2.0, 4.0])).tolist() == [0, 255]


def test_grey_is_promoted_only_where_grey_and_colour_mix():
    grey, colour = np.zeros((2, 2, 1), np.uint8), np.zeros((2, 2, 3), np.uint8)
    same = [grey, grey]
    assert grey_to_rgb_if_mixed(same) is same
    assert [im.shape[-1] for im in grey_to_rgb_if_mixed([grey, colour])] == [3, 3]
