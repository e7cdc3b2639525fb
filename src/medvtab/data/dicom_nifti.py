"""DICOM and NIfTI files decoded to uint8 images (for ``medvtab data prepare``; training reads prepared arrays).

pydicom and nibabel are the optional extra medvtab[medical-formats], imported when a file is read.

DICOM policy: pixel values go through RescaleSlope / RescaleIntercept; CT (Modality CT) is windowed (values
clipped to [c - w/2, c + w/2] and scaled to 0..255); any other modality is min-max scaled per image;
MONOCHROME1 is inverted after scaling (so high = bright); multi-frame files give their middle frame; colour
(3 samples) files are min-max scaled, not windowed.

NIfTI policy: the volume is reoriented to the closest canonical (RAS) orientation, 4-D volumes give their
first volume; the middle K axial slices (all where the volume has fewer) become images, each ``np.rot90`` of
``volume[:, :, z]`` (anterior up); intensities are min-max scaled per volume.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medvtab.data.images import minmax_to_uint8, scale_to_uint8
from medvtab.errors import MedvtabError, first_line
from medvtab.extras import require

DEFAULT_WINDOW = (40.0, 400.0)  # CT soft tissue: centre, width (HU)
DEFAULT_SLICES = 8


def _why(err: Exception) -> str:
    """An exception's first line, short, for a one-line error."""
    return first_line(err)


def read_dicom(path: Path, window: tuple[float, float] = DEFAULT_WINDOW) -> tuple[np.ndarray, str, str]:
    """(uint8 (H, W) or (H, W, 3), patient id, study id) under the module's DICOM policy."""
    pydicom = require("pydicom", extra="medical-formats", feature="DICOM input")
    try:
        ds = pydicom.dcmread(str(path))
        arr = np.asarray(ds.pixel_array)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for bad or unsupported files
        raise MedvtabError(f"{path}: unreadable DICOM ({_why(err)})") from None
    colour = int(getattr(ds, "SamplesPerPixel", 1) or 1) == 3
    if arr.ndim == (4 if colour else 3):  # multi-frame: the middle frame
        arr = arr[arr.shape[0] // 2]
    slope, intercept = getattr(ds, "RescaleSlope", 1), getattr(ds, "RescaleIntercept", 0)
    x = arr.astype(np.float64) * float(1 if slope in (None, "") else slope) + float(intercept or 0)
    if colour:
        out = minmax_to_uint8(x)
    elif str(getattr(ds, "Modality", "")).upper() == "CT":
        centre, width = window
        out = scale_to_uint8(x, centre - width / 2, centre + width / 2)
    else:
        out = minmax_to_uint8(x)
    if not colour and str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out
    return out, str(getattr(ds, "PatientID", "") or ""), str(getattr(ds, "StudyInstanceUID", "") or "")


def nifti_stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]


def read_nifti(path: Path, slices: int = DEFAULT_SLICES) -> list[np.ndarray]:
    """The middle ``slices`` axial slices, uint8 (H, W), under the module's NIfTI policy."""
    nib = require("nibabel", extra="medical-formats", feature="NIfTI input")
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        vol = np.asarray(img.dataobj, dtype=np.float64)
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for bad files
        raise MedvtabError(f"{path}: unreadable NIfTI ({_why(err)})") from None
    while vol.ndim > 3:
        vol = vol[..., 0]
    if vol.ndim == 2:
        vol = vol[..., None]
    if vol.ndim != 3 or not vol.size:
        raise MedvtabError(f"{path}: expected a 3-D volume, got shape {vol.shape}")
    scaled = minmax_to_uint8(vol)
    depth = vol.shape[2]
    start = max(0, (depth - slices) // 2)
    return [np.ascontiguousarray(np.rot90(scaled[:, :, z])) for z in range(start, min(depth, start + slices))]
