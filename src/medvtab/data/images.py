"""Images as medvtab holds them: uint8 ``(H, W, C)`` with C = 1 (grey) or 3 (RGB).

The one place for decoding an image file, scaling other values to uint8 (images of more than 8 bits: min-max per
image), resizing (bilinear) and promoting grey to RGB where a set mixes both. DICOM and NIfTI files are decoded in :mod:`medvtab.data.dicom_nifti`.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medvtab.errors import MedvtabError, first_line

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def resize(arr: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) -> uint8 (size, size, 1|3), bilinear."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    img = Image.fromarray(np.ascontiguousarray(arr))
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    out = np.asarray(img, dtype=np.uint8)
    return out[..., None] if out.ndim == 2 else out


MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's own bomb limit (~89 M pixels), where it would only warn


def read_image(path: Path, size: int) -> np.ndarray:
    """An image file decoded as grey (grey modes) or RGB (the rest), resized to ``size`` square. Grey images of
    more than 8 bits (16-bit PNG / TIFF X-ray exports, 32-bit integer or float TIFFs) are min-max scaled per image
    onto 0..255: their window comes from the data, where converting to 8 bits would clip at 255. An image whose
    header declares more than :data:`MAX_PIXELS` pixels is refused before it is decoded (a decompression bomb)."""
    try:
        with warnings.catch_warnings():  # Pillow warns in the band this refuses anyway
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise MedvtabError(f"{path}: image of {width} x {height} pixels refused (more than {MAX_PIXELS:,} "
                                   f"pixels); downscale it first")
            img.load()
            if img.mode in ("I", "F") or img.mode.startswith("I;16"):  # 16-bit, 32-bit and float grey
                arr = minmax_to_uint8(np.asarray(img))
            else:
                arr = np.asarray(img.convert("L" if img.mode in ("L", "1") else "RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as err:  # Pillow refuses at open above twice its limit
        raise MedvtabError(f"{path}: image refused, too large ({first_line(err)})") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise MedvtabError(f"{path}: unreadable image ({first_line(err)})") from None
    return resize(arr, size)


def scale_to_uint8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Values clipped to [lo, hi] and mapped linearly onto 0..255 (all 0 where the range is empty)."""
    x = np.clip(x.astype(np.float64), lo, hi)
    return np.zeros(x.shape, np.uint8) if hi <= lo else np.round((x - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def minmax_to_uint8(x: np.ndarray) -> np.ndarray:
    """``x`` scaled so that its minimum is 0 and its maximum 255."""
    return scale_to_uint8(x, float(np.min(x)), float(np.max(x))) if x.size else x.astype(np.uint8)


def grey_to_rgb_if_mixed(images: list[np.ndarray]) -> list[np.ndarray]:
    """``images`` (each ``(..., C)``) as they are where all are grey or all colour; else grey ones as RGB."""
    if len({im.shape[-1] for im in images}) <= 1:
        return images
    return [np.repeat(im, 3, -1) if im.shape[-1] == 1 else im for im in images]
