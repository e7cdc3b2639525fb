"""``medvtab data prepare``: convert a raw download into a prepared directory (:mod:`medvtab.data.manifest`).

Layouts:

- ``imagefolder``: ``RAW/CLASS/**/*.png`` (any image suffix) or ``RAW/{train,val,test}/CLASS/**``.
- ``csv``: ``RAW/labels.csv`` (or ``--csv``) naming each image (relative to RAW; a missing suffix is tried
  with the usual image suffixes) and its label; optional patient and split columns. Without
  ``--label-column``: a column ``label``, else the only column left over; several 0/1 columns with exactly
  one 1 per row are read as one-hot (single-label). Multi-label (``task_type: multi-label``): several label
  columns (``--label-column A,B,C``, or found by themselves: every left-over column holds only 1, 0, -1 or
  blank and some row has not exactly one 1), or one column of labels joined by ``|`` or ``;`` (NIH
  ChestX-ray14's "Atelectasis|Effusion"; each distinct name becomes a label). CheXpert's marks are read as
  CheXpert defines them: 1 positive, 0 negative, blank not mentioned (read as negative), -1 uncertain; the
  uncertain policy ``--uncertain`` (Irvin et al. 2019) is ``ignore`` (default: kept as -1, masked out of
  the loss and the metrics), ``zeros`` (U-Zeros: negative) or ``ones`` (U-Ones: positive). Without a patient
  column, a path component ``patientNNNNN`` (CheXpert's layout) is the patient id and ``studyN`` the study.
  An image path that resolves (symlinks and ``..`` followed) outside RAW is refused unless
  ``--allow-outside-root``; the manifest then records its absolute path.
- ``npz``: a MedMNIST-style or pooled ``.npz`` (read as :func:`medvtab.data.loading.load_task` reads it).
- ``dicom``: ``RAW/CLASS/**/*.dcm`` (or ``RAW/{train,val,test}/CLASS/**``), read with pydicom
  (:func:`medvtab.data.dicom_nifti.read_dicom`). Policy: pydicom's modality LUT, then the file's own VOI LUT or
  window (pydicom's ``apply_voi_lut``); a CT with ``--window center,width`` (HU) uses that instead, a CT with no
  window of its own the soft-tissue 40,400; other files without one are min-max scaled per image; MONOCHROME1 is
  inverted after scaling (so high = bright); multi-frame files give their middle frame; colour (3 samples)
  files are min-max scaled, not windowed. PatientID is the patient id, StudyInstanceUID the study id.
- ``nifti``: ``RAW/CLASS/*.nii`` / ``*.nii.gz`` (or with split folders), read with nibabel. Policy: the
  volume is reoriented to the closest canonical (RAS) orientation, 4-D volumes give their first volume;
  the middle ``--slices K`` axial slices (default 8; all where the volume has fewer) become images, each
  ``np.rot90`` of ``volume[:, :, z]`` (anterior up); intensities are min-max scaled per volume. The volume's
  file name (without .nii / .nii.gz) is both its patient id and its study id.

Every image is resized (bilinear) to ``--image-size`` square and stored uint8; grey stays one channel unless
the source mixes grey and colour (then all become RGB). Unreadable files are collected and reported in one
MedvtabError: the count and the first few, named.

At scale: the sources are listed first (names, labels, splits: nothing decoded), in the prepared order; then
they are decoded in that order (:func:`medvtab.data.decoding.decode_in_order`, in ``workers`` processes) straight
into the memory-mapped .npy (:class:`medvtab.data.manifest.PreparedWriter`), so memory does not grow with the
number of images, and any worker count writes the same bytes.
"""
from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medvtab.atomic import staged_dir
from medvtab.data import manifest
from medvtab.data.catalogue import get_task, task_dict
from medvtab.data.decoding import Options, Source, decode_in_order, default_workers
from medvtab.data.dicom_nifti import DEFAULT_SLICES, DEFAULT_WINDOW, nifti_stem
from medvtab.data.images import IMAGE_SUFFIXES
from medvtab.data.loading import class_folder_files, read_npz
from medvtab.errors import MedvtabError, first_line

LAYOUTS = ("imagefolder", "csv", "npz", "dicom", "nifti")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test"}
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename", "file_name", "img", "image_id", "id_code",
                 "id")
PATIENT_COLUMNS = ("patient_id", "patient", "patientid")
SPLIT_COLUMNS = ("split", "subset", "fold_split")
STUDY_COLUMNS = ("study_id", "study")
MAX_NAMED = 5
UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")
MULTI_SEPARATORS = "|;"


@dataclass(slots=True)
class Item:
    """One manifest row as listed (a NIfTI volume's item stands for each of its slices)."""
    source_path: str
    label: str | int | tuple[int, ...]  # a tuple of 1 / 0 / -1 for a multi-label task
    patient_id: str = ""
    study_id: str = ""
    split: str = ""


def _fail_many(what: str, bad: list[tuple[str, str]]) -> None:
    if bad:
        named = "; ".join(f"{p} ({why})" for p, why in bad[:MAX_NAMED])
        more = f" and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""
        raise MedvtabError(f"{len(bad)} unreadable {what} file(s): {named}{more}")


# ---------------------------------------------------------------- layouts: (items, array sources or None, policy)

class FileSources(Sequence):
    """The :class:`~medvtab.data.decoding.Source` of each item (a file under ``src``), made when asked: a set of
    200,000 files holds one list of items, not a second one of paths."""

    def __init__(self, src: Path, items: list[Item], layout: str):
        self.src, self.items, self.layout = str(src), items, layout

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._source(it) for it in self.items[i]]
        return self._source(self.items[i])

    def _source(self, it: Item) -> Source:
        kind = "nifti" if self.layout == "nifti" else "dicom" if it.source_path.lower().endswith(".dcm") else "image"
        return Source(kind, os.path.join(self.src, it.source_path))  # an absolute source_path stays as it is


def _listed(src: Path, kind: str, match=None) -> tuple[list[Item], None]:
    """Items of the class-folder files under ``src`` (:func:`~medvtab.data.loading.class_folder_files`), paths kept
    as strings: a walk of 200,000 files holds no Path objects."""
    items = []
    for f, cls, split in class_folder_files(src, match):
        vid = nifti_stem(f) if kind == "nifti" else ""
        items.append(Item(f.relative_to(src).as_posix(), cls, vid, vid, split))
    if not items:
        raise MedvtabError(f"{src}: no matching files in class folders (expected RAW/CLASS/... or "
                           f"RAW/{{train,val,test}}/CLASS/...)")
    return items, None


def _imagefolder(src: Path, **_) -> tuple[list[Item], list[Source] | None, dict]:
    return *_listed(src, "image"), {"resize": "bilinear"}


def _dicom(src: Path, window=None, **_) -> tuple[list[Item], list[Source] | None, dict]:
    policy = {"modality_lut": "pydicom apply_modality_lut (RescaleSlope, RescaleIntercept or a Modality LUT)",
              "voi": "the file's own VOI LUT or first window (pydicom apply_voi_lut), output range onto 0..255",
              "ct_window": ({"center": window[0], "width": window[1], "over": "the files' own"} if window else
                            {"center": DEFAULT_WINDOW[0], "width": DEFAULT_WINDOW[1], "where": "no window of its own"}),
              "no_window": "min-max per image", "monochrome1": "inverted",
              "multi_frame": "middle frame", "patient_id": "PatientID", "study_id": "StudyInstanceUID",
              "resize": "bilinear"}
    return *_listed(src, "dicom", lambda f: f.suffix.lower() == ".dcm"), policy


def _nifti(src: Path, slices=DEFAULT_SLICES, **_) -> tuple[list[Item], list[Source] | None, dict]:
    policy = {"orientation": "closest canonical (RAS); 4-D: first volume", "plane": "axial, np.rot90(vol[:, :, z])",
              "slices": f"middle {slices} per volume (all if fewer)", "slices_per_volume": slices,
              "intensity": "min-max per volume", "patient_id": "volume file name", "study_id": "volume file name",
              "resize": "bilinear"}
    return *_listed(src, "nifti", lambda f: f.name.lower().endswith((".nii", ".nii.gz"))), policy


def _npz(src: Path, **_) -> tuple[list[Item], list[Source] | None, dict]:
    if src.is_dir():
        found = sorted(src.glob("*.npz"))
        if len(found) != 1:
            raise MedvtabError(f"{src}: expected one .npz file (or pass it as --src), found {len(found)}")
        src = found[0]
    parts = read_npz(src)
    items, sources = [], []
    for key in ("train", "val", "test", "pool"):
        if key not in parts:
            continue
        split = parts[key]
        for i in range(len(split)):
            pid = "" if split.patient_ids is None else str(split.patient_ids[i])
            name = "images" if key == "pool" else f"{key}_images"
            items.append(Item(f"{src.name}:{name}[{i}]", int(split.labels[i]), pid,
                              split="" if key == "pool" else key))
            sources.append(Source("array", split.images[i]))
    policy = {"resize": "bilinear", "class_names": parts.get("class_names")}
    return items, sources, policy


def _pick(header: list[str], given: str | None, candidates, what: str, required: bool) -> str | None:
    if given is not None:
        if given not in header:
            raise MedvtabError(f"option '--{what}-column': no column '{given}' (columns: {', '.join(header)})")
        return given
    lower = {h.lower(): h for h in header}
    for c in candidates:
        if c in lower:
            return lower[c]
    if required and not header:
        raise MedvtabError(f"the CSV has no header row to find the {what} column in; add one, or pass "
                           f"--{what}-column")
    if required:
        raise MedvtabError(f"cannot tell the {what} column among {', '.join(header)}; pass --{what}-column")
    return None


MARKS = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "": 0, "-1": -1, "-1.0": -1}


def _ternary(value: str | None) -> bool:
    return (value or "").strip() in MARKS


def _mark(value: str | None) -> int:
    """A CheXpert-style mark: 1 positive, 0 negative, blank not mentioned (negative), -1 uncertain."""
    return MARKS[(value or "").strip()]


def _component(rel: str, pattern: str) -> str:
    return next((part for part in Path(rel).parts if re.fullmatch(pattern, part, re.IGNORECASE)), "")


def _csv(src: Path, csv_path=None, label_column=None, image_column=None, patient_column=None, split_column=None,
         uncertain="ignore", allow_outside_root=False, **_) -> tuple[list[Item], list[Source] | None, dict]:
    file = Path(csv_path) if csv_path is not None else src / "labels.csv"
    if not file.is_file():
        raise MedvtabError(f"{file}: no such CSV file (pass --csv FILE)")
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise MedvtabError(f"{file}: not a readable CSV ({first_line(err)})") from None
    if not rows:
        raise MedvtabError(f"{file}: no rows")
    image_col = _pick(header, image_column, IMAGE_COLUMNS, "image", True)
    patient_col = _pick(header, patient_column, PATIENT_COLUMNS, "patient", False)
    split_col = _pick(header, split_column, SPLIT_COLUMNS, "split", False)
    study_col = _pick(header, None, STUDY_COLUMNS, "study", False)
    if uncertain not in UNCERTAIN_POLICIES:
        raise MedvtabError(f"option '--uncertain': '{uncertain}' is not one of {', '.join(UNCERTAIN_POLICIES)}")
    one_hot, multi_columns, label_col = None, None, None
    if label_column is not None and "," in label_column:
        multi_columns = [c.strip() for c in label_column.split(",") if c.strip()]
        for c in multi_columns:
            _pick(header, c, (), "label", True)
        bad = next(((c, r[c]) for r in rows for c in multi_columns if not _ternary(r[c])), None)
        if bad:
            raise MedvtabError(f"{file}: multi-label column '{bad[0]}' holds '{bad[1]}'; expected 1, 0, -1 or blank")
    elif label_column is not None:
        label_col = _pick(header, label_column, (), "label", True)
    elif "label" in {h.lower() for h in header}:
        label_col = _pick(header, None, ("label",), "label", True)
    else:
        rest = [h for h in header if h not in (image_col, patient_col, split_col, study_col)]
        if len(rest) == 1:
            label_col = rest[0]
        elif len(rest) > 1 and all(_ternary(r[h]) for r in rows for h in rest):
            single = all(sum(_mark(r[h]) == 1 for h in rest) == 1 and all(_mark(r[h]) != -1 for h in rest)
                         for r in rows)
            one_hot, multi_columns = (rest, None) if single else (None, rest)
        else:
            raise MedvtabError(f"{file}: cannot tell the label column(s) among {', '.join(rest)}; pass "
                               f"--label-column NAME (or A,B,C for a multi-label task)")
    label_names = multi_columns
    if label_col is not None and any(sep in (r[label_col] or "") for r in rows for sep in MULTI_SEPARATORS):
        label_names = sorted({t.strip() for r in rows for t in re.split(r"[|;]", r[label_col] or "") if t.strip()})
    fill = {"ignore": -1, "zeros": 0, "ones": 1}[uncertain]

    def label_of(r: dict):
        if multi_columns:
            return tuple(fill if m == -1 else m for m in (_mark(r[c]) for c in multi_columns))
        if one_hot:
            return one_hot[[_mark(r[h]) == 1 for h in one_hot].index(True)]
        value = (r[label_col] or "").strip()
        if label_names:  # one column of joined names: a row without any is "no finding" (all negative)
            tokens = {t.strip() for t in re.split(r"[|;]", value)}
            return tuple(int(name in tokens) for name in label_names)
        return value

    items = []
    for n, r in enumerate(rows, start=2):
        rel = (r[image_col] or "").strip()
        label = label_of(r)
        if not rel or label == "":
            raise MedvtabError(f"{file}: line {n}: empty image or label")
        path = src / rel
        if not path.is_file():
            tries = [src / (rel + s) for s in sorted(IMAGE_SUFFIXES | {".dcm"})]
            path = next((p for p in tries if p.is_file()), None)
            if path is None:
                raise MedvtabError(f"{file}: line {n}: image '{rel}' not found under {src}")
        inside = path.resolve().is_relative_to(src.resolve())  # symlinks and '..' resolved
        if not inside and not allow_outside_root:
            raise MedvtabError(f"{file}: line {n}: image '{rel}' lies outside the raw root {src}; pass "
                               f"--allow-outside-root if that is intended")
        split = ""
        if split_col is not None and (r[split_col] or "").strip():
            split = SPLIT_NAMES.get(r[split_col].strip().lower())
            if split is None:
                raise MedvtabError(f"{file}: line {n}: split '{r[split_col]}' is not train, val or test")
        pid = (r[patient_col] or "").strip() if patient_col else _component(rel, r"patient\d+")
        study = (r[study_col] or "").strip() if study_col else _component(rel, r"study\d+")
        items.append(Item(path.relative_to(src).as_posix() if inside else str(path.resolve()), label, pid, study,
                          split))
    policy = {"csv": str(file), "image_column": image_col, "label_column": label_col, "one_hot_columns": one_hot,
              "patient_column": patient_col, "split_column": split_col, "resize": "bilinear"}
    if label_names:
        policy.update(multi_label_columns=multi_columns, label_names=label_names, uncertain=uncertain,
                      blank="negative (not mentioned)")
    return items, None, policy


READERS = {"imagefolder": _imagefolder, "csv": _csv, "npz": _npz, "dicom": _dicom, "nifti": _nifti}
UNREADABLE = {"imagefolder": "image", "csv": "image", "npz": "image", "dicom": "DICOM", "nifti": "NIfTI"}


# ---------------------------------------------------------------- prepare

def _classes(labels: list, catalogue_names: list[str] | None, given_names) -> tuple[np.ndarray, list[str]]:
    """(label indices, class names). Integer labels are indices; names are sorted (catalogue order where the
    catalogue names exactly those classes)."""
    try:
        ints = [int(str(v)) for v in labels]
    except ValueError:
        ints = None
    if ints is not None:
        y = np.array(ints, dtype=np.int64)
        if y.min() < 0:
            raise MedvtabError(f"negative label {y.min()}")
        k = int(y.max()) + 1
        for names in (given_names, catalogue_names):
            if names and len(names) >= k:
                return y, [str(c) for c in names]
        return y, [str(i) for i in range(k)]
    present = sorted({str(v) for v in labels})
    names = list(catalogue_names) if catalogue_names and set(present) <= set(catalogue_names) else present
    index = {c: i for i, c in enumerate(names)}
    return np.array([index[str(v)] for v in labels], dtype=np.int64), names


def prepare(task: str, src: str | Path, out: str | Path, *, layout: str | None = None, image_size: int = 224,
            csv_path: str | Path | None = None, label_column: str | None = None, image_column: str | None = None,
            patient_column: str | None = None, split_column: str | None = None,
            window: tuple[float, float] | None = None, slices: int = DEFAULT_SLICES,
            uncertain: str = "ignore", allow_outside_root: bool = False, workers: int | None = None,
            on_progress: Callable[[int, int], None] = lambda done, total: None) -> dict:
    """Convert ``src`` into the prepared directory ``out``; returns its task.json. See the module docstring.

    ``workers``: decoding processes (default: the CPU count; 1: this process); the output does not depend on it.
    ``on_progress(done, total)``: called as sources (files, array rows) are decoded."""
    src, out = Path(src), Path(out)
    try:
        info = get_task(task)
    except MedvtabError:
        info = None
    if layout is None:
        if info is None:
            raise MedvtabError(f"task '{task}' is not registered: pass --layout ({', '.join(LAYOUTS)})")
        layout = info.raw_layout
    layout = layout.strip().lower()
    if layout not in LAYOUTS:
        raise MedvtabError(f"option '--layout': '{layout}' is not one of {', '.join(LAYOUTS)}")
    if image_size < 1:
        raise MedvtabError(f"option '--image-size': must be at least 1, got {image_size}")
    if slices < 1:
        raise MedvtabError(f"option '--slices': must be at least 1, got {slices}")
    if window is not None and window[1] <= 0:
        raise MedvtabError(f"option '--window': width must be positive, got {window[1]}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise MedvtabError(f"option '--workers': must be at least 1, got {workers}")
    if not src.exists() or (layout != "npz" and not src.is_dir()):
        raise MedvtabError(f"{src}: no such {'file or ' if layout == 'npz' else ''}directory")
    if out.exists() and not out.is_dir():
        raise MedvtabError(f"{out}: is a file, not a directory; choose a new --out")
    if out.exists() and any(out.iterdir()):
        raise MedvtabError(f"{out}: output directory exists and is not empty; choose a new --out")

    items, sources, policy = READERS[layout](src, csv_path=csv_path, label_column=label_column,
                                             image_column=image_column, patient_column=patient_column,
                                             split_column=split_column, window=window, slices=slices,
                                             uncertain=uncertain, allow_outside_root=allow_outside_root)
    splits = [it.split for it in items]
    if all(splits):  # decoded in the prepared order: train, val, test (stable), each split a contiguous range
        order = sorted(range(len(items)), key=lambda i: ("train", "val", "test").index(splits[i]))
        items = [items[i] for i in order]
        sources = None if sources is None else [sources[i] for i in order]
    sources = FileSources(src, items, layout) if sources is None else sources  # None: files, made when asked
    options = Options(image_size, None if window is None else tuple(window), slices)
    capacity, total = sum(s.images_at_most(options) for s in sources), len(sources)
    with (staged_dir(out) as stage, manifest.PreparedWriter(stage, image_size, capacity) as writer,
          closing(decode_in_order(sources, options, workers, lambda done: on_progress(done, total))) as decoded):
        rows_items, bad = [], []  # one reference per image written (a volume's item once per slice)
        for it, got in zip(items, decoded, strict=True):
            if got.error:
                bad.append((it.source_path, got.error))
                continue
            it.patient_id, it.study_id = it.patient_id or got.patient_id, it.study_id or got.study_id
            for image in got.images:
                writer.add(image)
                rows_items.append(it)
        _fail_many(UNREADABLE[layout], bad)
        meta, rows = _describe(task, info, src, layout, image_size, rows_items, policy)
        meta.update(channels=writer.channels, images=writer.count)
        writer.finish(meta, rows)
    return meta


def _describe(task: str, info, src: Path, layout: str, image_size: int, items: list[Item], policy: dict):
    """(task.json, manifest rows (an iterator)) of the decoded ``items``; task.json's ``channels`` and ``images``
    are left for the writer to fill in (their place in it kept)."""
    if not items:
        raise MedvtabError(f"{src}: no images found")
    splits = [it.split for it in items]
    if any(splits) and not all(splits):
        raise MedvtabError(f"{src}: {sum(not s for s in splits)} of {len(items)} images have no split; give a "
                           f"split for every image or for none")
    multi = "label_names" in policy
    if multi:
        labels, class_names = np.array([it.label for it in items], dtype=np.int8), list(policy["label_names"])
    else:
        labels, class_names = _classes([it.label for it in items], info.class_names if info else None,
                                       policy.pop("class_names", None))
    if info is not None and info.task_type == "multi-label" and not multi:
        raise MedvtabError(f"task '{info.name}' is multi-label but {src} gave one label per image; pass the label "
                           f"columns with --label-column A,B,C")
    if len(class_names) < 2:
        raise MedvtabError(f"{src}: need at least 2 classes, found {len(class_names)}")
    meta = {"name": info.name if info else task, "task_type": "multi-label" if multi else "multi-class",
            "num_classes": len(class_names), "class_names": class_names,
            "source": str(src.resolve()), "layout": layout, "image_size": image_size,
            "channels": None, "images": len(items),
            "patients": len({it.patient_id for it in items if it.patient_id}) or None,
            "registry": task_dict(info) if info else None, "policy": policy}
    rows = ({"index": i, "source_path": it.source_path,
             "label": ";".join(str(int(v)) for v in y) if multi else int(y), "patient_id": it.patient_id,
             "study_id": it.study_id, "split": it.split} for i, (it, y) in enumerate(zip(items, labels)))
    return meta, rows
