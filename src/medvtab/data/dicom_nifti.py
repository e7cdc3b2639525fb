"""DICOM and NIfTI files decoded to uint8 images (for ``medvtab data prepare``; training reads prepared arrays).

pydicom and nibabel are the optional extra medvtab[medical-formats], imported when a file is read.

DICOM policy: pixel values go through pydicom's modality LUT (RescaleSlope / RescaleIntercept or a Modality LUT
Sequence), then the file's own VOI: its VOI LUT Sequence or its first WindowCenter / WindowWidth, through pydicom's
``apply_voi_lut`` (LINEAR, LINEAR_EXACT or SIGMOID as the file says), whose output range is mapped onto 0..255.
A CT given an explicit window (``--window C,W`` in HU) uses that instead; a CT without a window of its own gets
the soft-tissue window 40/400 (values clipped to [c - w/2, c + w/2] and scaled to 0..255); any other file
without one is min-max scaled per image. MONOCHROME1 is inverted after scaling (so high = bright); multi-frame
files give their middle frame; colour (3 samples) files are min-max scaled, not windowed.

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


def _file_voi(x: np.ndarray, ds, pixels) -> np.ndarray:
    """The file's own VOI LUT or window applied by pydicom, its output range mapped onto 0..255. The range is
    where pydicom sends values far beyond every window bound and LUT entry (a sigmoid only approaches it)."""
    from pydicom.multival import MultiValue

    voi = np.asarray(pixels.apply_voi_lut(x, ds, index=0), dtype=np.float64)
    bounds = [float(v[0] if isinstance(v, MultiValue) else v)
              for v in (ds.get("WindowCenter"), ds.get("WindowWidth")) if v is not None]
    reach = 1e3 * (float(np.abs(x).max(initial=0)) + sum(map(abs, bounds)) + 1.0)
    with np.errstate(over="ignore"):  # a sigmoid's exp overflows out there, to its limit
        ends = np.asarray(pixels.apply_voi_lut(np.array([-reach, reach]), ds, index=0), dtype=np.float64)
    return scale_to_uint8(voi, float(ends.min()), float(ends.max()))


def read_dicom(path: Path, window: tuple[float, float] | None = None) -> tuple[np.ndarray, str, str]:
    """(uint8 (H, W) or (H, W, 3), patient id, study id) under the module's DICOM policy; ``window``: a CT's
    (centre, width) in HU, in place of the file's own."""
    pydicom = require("pydicom", extra="medical-formats", feature="DICOM input")
    from pydicom import pixels

    try:
        ds = pydicom.dcmread(str(path))
        arr = np.asarray(ds.pixel_array)
        colour = int(getattr(ds, "SamplesPerPixel", 1) or 1) == 3
        if arr.ndim == (4 if colour else 3):  # multi-frame: the middle frame
            arr = arr[arr.shape[0] // 2]
        x = np.asarray(pixels.apply_modality_lut(arr, ds), dtype=np.float64)
        ct = str(getattr(ds, "Modality", "")).upper() == "CT"
        if colour:
            out = minmax_to_uint8(x)
        elif ct and window is not None:
            out = scale_to_uint8(x, window[0] - window[1] / 2, window[0] + window[1] / 2)
        elif ds.get("VOILUTSequence") or ds.get("WindowWidth") is not None:
            out = _file_voi(x, ds, pixels)
        elif ct:
            centre, width = DEFAULT_WINDOW
            out = scale_to_uint8(x, centre - width / 2, centre + width / 2)
        else:
            out = minmax_to_uint8(x)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for bad or unsupported files
        raise MedvtabError(f"{path}: unreadable DICOM ({_why(err)})") from None
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
