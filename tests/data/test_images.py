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


def real_xray() -> np.ndarray:
    from medvtab.data.loading import bundled_path

    with np.load(bundled_path("pneumoniamnist")) as npz:
        return npz["train_images"][3]


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_images_of_more_than_8_bits_are_rescaled_not_clipped(tmp_path, mode):
    """A real X-ray exported at 16 bits (PNG), 32-bit integer or float (TIFF): the values span far beyond 255, and
    the decoded image is the per-image min-max rescale, not a saturated white one."""
    xray = real_xray().astype(np.float64)
    wide = xray * 150.0 + 3000.0  # 3000..41250: a 16-bit detector's range
    arr = {"I;16": wide.astype(np.uint16), "I": wide.astype(np.int32), "F": wide.astype(np.float32)}[mode]
    path = tmp_path / ("x.png" if mode == "I;16" else "x.tif")
    Image.fromarray(arr).save(path)
    with Image.open(path) as img:
        assert img.mode == mode
    decoded = read_image(path, 28)[..., 0]
    expected = np.round((wide - wide.min()) * 255.0 / (wide.max() - wide.min())).astype(np.uint8)
    assert np.array_equal(decoded, expected)
    # the 8-bit original's contrast, recovered (to one grey level: float rounding at .5)
    assert np.abs(decoded.astype(int) - minmax_to_uint8(xray)).max() <= 1
    assert (decoded < 255).mean() > 0.5  # Pillow's convert("L") would clip every pixel to 255
