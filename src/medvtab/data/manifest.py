"""The prepared-directory format that ``medvtab data prepare`` writes and
:func:`medvtab.data.loading.load_task` reads.

A prepared directory holds:

- ``task.json``: name, num_classes, class_names, source, layout, image_size, channels, the registry
  metadata (``registry``, where the task is registered) and the conversion ``policy`` used.
- ``manifest.csv``: one row per image, columns ``index, source_path, label, patient_id, study_id, split``.
  ``label`` is a class index; for a multi-label task (``task.json`` ``task_type: multi-label``) it is one
  value per label joined by ``;`` (1 positive, 0 negative, -1 unknown), e.g. ``1;0;-1``.
  ``source_path`` is relative to the raw source (``--src``); ``patient_id`` / ``study_id`` may be empty;
  ``split`` is train / val / test for every row, or empty for every row (the pool is then split by
  :func:`load_task` as a pooled .npz is: 70/10/20, patient-disjoint where every row has a patient id).
  Rows with a split are ordered train, val, test, so ``index`` is each image's pool position.
- ``images_<size>.npy``: every image decoded once, resized, uint8 ``(N, size, size, C)``; written and opened
  memory-mapped (:class:`PreparedWriter`), so neither preparing nor training holds the images in memory.

Nothing here imports torch. The directory is written into a staged sibling and renamed into place at the end
(:func:`medvtab.atomic.staged_dir`), so a failure leaves no output directory.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medvtab.data.taskdata import Split, multilabel_split
from medvtab.errors import MedvtabError, first_line

TASK_JSON = "task.json"
MANIFEST = "manifest.csv"
COLUMNS = ("index", "source_path", "label", "patient_id", "study_id", "split")
SPLITS = ("train", "val", "test")
COPY_BYTES = 16 << 20  # the block of images copied at a time when the .npy is reshaped


def images_name(size: int) -> str:
    return f"images_{size}.npy"


def is_prepared(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / TASK_JSON).is_file() and (path / MANIFEST).is_file()


class PreparedWriter:
    """A prepared directory written into ``stage`` (a staged directory: it appears complete or not at all), as a
    context manager: :meth:`add` writes each image straight into the memory-mapped .npy, :meth:`finish` writes
    manifest.csv and task.json. Memory does not grow with the number of images.

    ``capacity``: at most this many images (the .npy is sized for it and cut down to the count at the end). The
    first image fixes the channels; where grey and colour mix, all become RGB (grey repeated), as loading does."""

    def __init__(self, stage: Path, image_size: int, capacity: int):
        self.stage, self.size, self.capacity = Path(stage), image_size, capacity
        self.path = self.stage / images_name(image_size)
        self.count, self.channels, self._images = 0, 0, None

    def __enter__(self) -> PreparedWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._images = None

    def add(self, image: np.ndarray) -> None:
        """``image``: uint8 ``(size, size, 1|3)``, the next row."""
        if self.count >= self.capacity:
            raise ValueError(f"more than the {self.capacity} images this writer was sized for")
        if self._images is None:
            self._reshape(self.capacity, image.shape[-1])
        elif image.shape[-1] != self.channels:
            if self.channels == 1:
                self._reshape(self.capacity, 3)
            else:
                image = np.repeat(image, 3, -1)
        self._images[self.count] = image
        self.count += 1

    def finish(self, meta: dict, rows) -> None:
        """Cut the .npy down to the images added, write ``rows`` (dicts of :data:`COLUMNS`, one per image, in
        order) as manifest.csv and ``meta`` as task.json."""
        if self.count < self.capacity:
            self._reshape(self.count, self.channels)
        self._images.flush()
        self._images = None
        written = 0
        with open(self.stage / MANIFEST, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})
                written += 1
        if written != self.count:
            raise ValueError(f"{written} rows for {self.count} images")
        with open(self.stage / TASK_JSON, "w") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")

    def _reshape(self, rows: int, channels: int) -> None:
        """A new .npy of ``rows`` images of ``channels``, the images so far copied in in bounded blocks."""
        staged = self.path.with_name(f".{self.path.name}.new")
        new = np.lib.format.open_memmap(staged, mode="w+", dtype=np.uint8,
                                        shape=(rows, self.size, self.size, channels))
        step = max(1, COPY_BYTES // (self.size * self.size * 3))
        for i in range(0, self.count, step):
            block = self._images[i:min(i + step, self.count)]
            new[i:i + len(block)] = np.repeat(block, 3, -1) if block.shape[-1] != channels else block
        new.flush()
        self._images = None
        os.replace(staged, self.path)
        self._images, self.channels = new, channels


class TaskMeta(BaseModel):
    """The fields of task.json that loading relies on (the rest, e.g. ``registry`` and ``policy``, is kept)."""
    model_config = ConfigDict(extra="allow")
    name: str
    num_classes: int = Field(ge=1)
    class_names: list[str]
    image_size: int = Field(ge=1)
    task_type: Literal["multi-class", "multi-label", "ordinal"] = "multi-class"


def read_meta(path: Path) -> dict:
    file = Path(path) / TASK_JSON
    try:
        with open(file) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MedvtabError(f"{file}: not readable JSON ({first_line(err)})") from None
    if not isinstance(meta, dict):
        raise MedvtabError(f"{file}: expected a JSON object (not a prepared directory?)")
    try:
        TaskMeta.model_validate(meta)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise MedvtabError(f"{file}: field '{field}': {first['msg']} (not a prepared directory?)") from None
    return meta


LOADED_COLUMNS = ("label", "patient_id", "split")


def read_manifest(path: Path) -> dict[str, list[str]]:
    """The columns loading uses (:data:`LOADED_COLUMNS`), each a list of one string per row: a manifest of a
    large set is not held as a dict per row."""
    file = Path(path) / MANIFEST
    try:
        with open(file, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise MedvtabError(f"{file}: missing column(s) {', '.join(missing)}")
            columns: dict[str, list[str]] = {c: [] for c in LOADED_COLUMNS}
            for row in reader:
                for c in LOADED_COLUMNS:
                    columns[c].append(row[c])
            return columns
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise MedvtabError(f"{file}: not a readable CSV ({first_line(err)})") from None


def _multilabel_rows(path: Path, labels: list[str], width: int) -> np.ndarray:
    try:
        targets = np.array([[int(v) for v in label.split(";")] for label in labels], dtype=np.int8).reshape(-1, width)
    except ValueError:
        raise MedvtabError(f"{path / MANIFEST}: multi-label 'label' must be {width} values 1 / 0 / -1 joined by ';' "
                           f"on every row") from None
    if not np.isin(targets, (-1, 0, 1)).all():
        raise MedvtabError(f"{path / MANIFEST}: multi-label 'label' values must be 1, 0 or -1")
    return targets


def load_prepared(path: Path):
    """``(name, parts)`` where parts is as :func:`medvtab.data.loading.read_npz` returns: ``train`` / ``val`` /
    ``test`` splits (from the manifest's split column) or a ``pool``, plus ``class_names``. Images stay
    memory-mapped (splits are contiguous row ranges, so they are views of the map)."""
    path = Path(path)
    meta, columns = read_meta(path), read_manifest(path)
    rows = len(columns["label"])
    npy = path / images_name(int(meta["image_size"]))
    try:
        images = np.load(npy, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise MedvtabError(f"{npy}: not a readable .npy file ({first_line(err)})") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise MedvtabError(f"{npy}: expected uint8 (N, H, W, 1|3), got {images.dtype} {images.shape}")
    if len(images) != rows:
        raise MedvtabError(f"{path}: {rows} manifest rows for {len(images)} images")
    multi = meta.get("task_type") == "multi-label"
    pids = columns["patient_id"]
    patient_ids = np.array(pids, dtype=str) if rows and all(pids) else None
    if multi:
        targets = _multilabel_rows(path, columns["label"], len(meta["class_names"]))

        def make(sl, pid):
            return multilabel_split(images[sl], targets[sl], pid)
    else:
        try:
            labels = np.array([int(label) for label in columns["label"]], dtype=np.int64)
        except ValueError:
            raise MedvtabError(f"{path / MANIFEST}: 'label' must be integer class indices") from None

        def make(sl, pid):
            return Split(images[sl], labels[sl], pid)
    splits = [split.strip().lower() for split in columns["split"]]
    parts: dict = {"class_names": [str(c) for c in meta["class_names"]]}
    if not any(splits):
        parts["pool"] = make(slice(None), patient_ids)
        return meta["name"], parts
    if not all(splits) or set(splits) - set(SPLITS):
        raise MedvtabError(f"{path / MANIFEST}: 'split' must be train/val/test on every row or empty on every row")
    start = 0
    for name in SPLITS:
        n = splits.count(name)
        if n and splits[start:start + n] != [name] * n:
            raise MedvtabError(f"{path / MANIFEST}: rows must be ordered train, val, test")
        if n:
            sl = slice(start, start + n)
            parts[name] = make(sl, None if patient_ids is None else patient_ids[sl])
        start += n
    if "train" not in parts:
        raise MedvtabError(f"{path / MANIFEST}: no 'train' rows")
    return meta["name"], parts
