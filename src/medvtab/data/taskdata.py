"""A loaded task in memory: :class:`TaskData` holds the train / val / test :class:`Split` s.

Images are uint8 ``(N, H, W, C)`` with C = 1 or 3; labels are int64 ``(N,)``. Multi-label sources (labels
of shape ``(N, L)`` with ``L > 1``, values 1 positive, 0 negative, -1 unknown: ignored by the loss and the
metrics) keep those rows as ``Split.targets``; ``Split.labels`` then holds each image's *stratum* (its first
positive label, or ``L`` where it has none), which every split, subsample and protocol stratifies on, as it
stratifies on the class of a single-label task.

Every image keeps its position in the source *pool* (``Split.index``): the source's splits concatenated in
the order train, val, test (a pooled file: its rows; an ImageFolder: its files, sorted by class then path).

A prepared task's images stay memory-mapped: a contiguous split is a view of the map, and any other subset
(carved splits, subsampling, protocols) is an :class:`ImageRows`, so no split is copied into memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medvtab.data.images import grey_to_rgb_if_mixed
from medvtab.errors import MedvtabError


class ImageRows:
    """Rows ``index`` of a memory-mapped ``(N, H, W, C)`` image array, read only when asked for. An integer reads
    one image (a view of the map), a slice or index array those images (a copy, as the map itself gives);
    iterating reads one at a time; ``np.asarray`` reads them all."""

    def __init__(self, base: np.memmap, index: np.ndarray):
        self.base, self.index = base, np.asarray(index, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.base.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            return self.base[self.index[key]]
        if not key or key[0] is Ellipsis:
            return np.asarray(self)[key]
        rows = self[key[0]]  # the rows first, then the rest of the key within them
        return rows[key[1:]] if np.ndim(self.index[key[0]]) == 0 else rows[(slice(None), *key[1:])]

    def __iter__(self):
        return (self.base[i] for i in self.index)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self.base[self.index], dtype=dtype)


def rows_of(images, index) -> np.ndarray | ImageRows:
    """``images[index]``, left on disk where ``images`` is memory-mapped (see :class:`ImageRows`)."""
    if isinstance(images, ImageRows):
        return ImageRows(images.base, images.index[index])
    if getattr(images, "filename", None) is not None:  # a np.memmap backed by its file (not a copy of one)
        return ImageRows(images, np.arange(len(images))[index])
    return images[index]


@dataclass
class Split:
    images: np.ndarray | ImageRows
    labels: np.ndarray
    patient_ids: np.ndarray | None = None  # one id (str) per image; None where the source has none
    index: np.ndarray | None = None  # each image's position in the source pool; None where untracked
    targets: np.ndarray | None = None  # multi-label tasks: (N, L) int8 of 1 / 0 / -1 (unknown); else None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def y(self) -> np.ndarray:
        """What the model is trained and scored on: class indices (N,), or multi-label targets (N, L)."""
        return self.labels if self.targets is None else self.targets

    def subset(self, index: np.ndarray) -> "Split":
        return Split(rows_of(self.images, index), self.labels[index],
                     None if self.patient_ids is None else self.patient_ids[index],
                     None if self.index is None else self.index[index],
                     None if self.targets is None else self.targets[index])

    @property
    def num_patients(self) -> int | None:
        return None if self.patient_ids is None else int(len(np.unique(self.patient_ids)))


def merge_splits(*splits: Split) -> Split:
    """One split holding every image of ``splits``, ordered by pool position (where tracked)."""
    pids = None if any(s.patient_ids is None for s in splits) else np.concatenate([s.patient_ids for s in splits])
    index = None if any(s.index is None for s in splits) else np.concatenate([s.index for s in splits])
    targets = None if any(s.targets is None for s in splits) else np.concatenate([s.targets for s in splits])
    images = grey_to_rgb_if_mixed([s.images for s in splits])
    if len({im.shape[1:] for im in images}) > 1:
        raise MedvtabError(f"cannot pool splits of different image shapes {sorted({im.shape[1:] for im in images})}")
    merged = Split(np.concatenate(images), np.concatenate([s.labels for s in splits]), pids, index, targets)
    return merged if index is None else merged.subset(np.argsort(index, kind="stable"))


def multilabel_strata(targets: np.ndarray) -> np.ndarray:
    """Each row's first positive label, or ``L`` (the number of labels) where it has none."""
    positive = np.asarray(targets) == 1
    return np.where(positive.any(1), positive.argmax(1), positive.shape[1]).astype(np.int64)


def multilabel_split(images: np.ndarray, targets, patient_ids=None) -> Split:
    """A multi-label split: ``targets`` (N, L) of 1 / 0 / -1, stratified by :func:`multilabel_strata`."""
    targets = np.asarray(targets, dtype=np.int8)
    return Split(images, multilabel_strata(targets), patient_ids, None, targets)


@dataclass
class TaskData:
    name: str
    source: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: list[str]
    notes: list[str] = field(default_factory=list)
    pool_sizes: dict[str, int] = field(default_factory=dict)  # source split -> images, in pool order
    extra_tests: dict[str, Split] = field(default_factory=dict)  # further test sets (patient-ood: "unseen")

    @property
    def multi_label(self) -> bool:
        return self.train.targets is not None

    @property
    def task_type(self) -> str:
        return "multi-label" if self.multi_label else "multi-class"

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test, **self.extra_tests}

    def sizes(self) -> dict[str, int]:
        return {name: len(split) for name, split in self.splits().items()}

    def patient_counts(self) -> dict[str, int] | None:
        """Distinct patients per split; None where the source has no patient ids."""
        if any(split.patient_ids is None for split in self.splits().values()):
            return None
        return {name: split.num_patients for name, split in self.splits().items()}
