"""Leakage: the one image digest, the duplicates it finds, and pre-training that saw a task's images.

- :func:`image_digest` is how medvtab tells that two images are the same, everywhere (the data check's
  duplicate findings, the patient-ood pool, the pre-training probe's test split).
- :func:`leak_pairs`: the split pairs where a shared image or patient leaks.
- :func:`drop_evaluation_duplicates`: the ``--dedupe`` remedy, evaluation images that also occur in a split
  fitted on or selected with dropped.
- :func:`leakage_warnings`: backbones pre-trained on a task built from the same source images (from the
  catalogue's ``source_group``).

The data check (:mod:`medvtab.data.check`) reports what these find.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import numpy as np

from medvtab.data.catalogue import get_task, overlapping_sources
from medvtab.data.taskdata import Split, TaskData
from medvtab.errors import MedvtabError

# Cross-split exact duplicates that a public source's *official* split contains, by image digest
# (:func:`image_digest` of the image as load_task returns it). Found by the data check on the MedMNIST v2
# files in /work/shared/data (28 px); any other cross-split duplicate stays an error.
OFFICIAL_SPLIT_DUPLICATES: dict[str, frozenset[str]] = {
    # breastmnist_28: train[115] == test[76], labelled 0 (malignant) in train and 1 (normal/benign) in test.
    "breastmnist": frozenset({"c5767ee63d8ac02941b3d127254b2641"}),
    # pneumoniamnist_28: 8 val images (10 train/val index pairs), all labelled 1 (pneumonia) on both sides.
    "pneumoniamnist": frozenset({
        "3d3c7089d1283b35b0db67baedd2fc7a", "499399c7c151dd103920ba7403fb1848", "66623fa041d4c94e150925b1f0b19034",
        "ab07be62310998c03967202c763c2a13", "be69bff9326f8bcee2cc4d19752176d9", "d8715be6fbd42f060e27a9dd2a9d0d7f",
        "de1e48e9104c4d934e67c30b8561f01a", "eb76d6fdc10187d39e20fecf7581f136",
    }),
}


def image_digest(image: np.ndarray) -> str:
    """blake2b-128 of an image's shape and bytes, as loaded (uint8 (H, W, C)): equal digests = identical pixels.

    Decoded pixels, not file bytes, so one picture stored twice (under another file name, or losslessly
    re-encoded) is found; the shape is hashed too, so equal bytes in another shape are another image. The
    digests pinned in :data:`OFFICIAL_SPLIT_DUPLICATES` are of this rule.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(tuple(image.shape)).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def first_copies(split: Split) -> np.ndarray:
    """Positions of the first occurrence of every distinct image (identical copies after it dropped)."""
    seen: set[str] = set()
    keep = []
    for i, image in enumerate(split.images):
        digest = image_digest(image)
        if digest not in seen:
            seen.add(digest)
            keep.append(i)
    return np.array(keep, dtype=np.int64)


def official_source(digest: str) -> str | None:
    """The public source whose official split holds this cross-split duplicate, or None."""
    for source, digests in OFFICIAL_SPLIT_DUPLICATES.items():
        if digest in digests:
            return source
    return None


def leak_pairs(names) -> list[tuple[str, str]]:
    """Split pairs where sharing an image or a patient leaks: one side is fitted on (train) or used to select
    the model (val). Two evaluation sets (test and a further test set) may share images."""
    names = list(names)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if a in ("train", "val")]


def drop_evaluation_duplicates(data: TaskData) -> tuple[TaskData, dict[str, int]]:
    """``data`` without the evaluation images (validation, test, further test sets) identical to an image of a
    split that leaks into them (:func:`leak_pairs`: train for validation; train and validation for the test
    sets), and how many each evaluation split lost. Training images are never dropped; two test sets may share
    images, as they may without ``--dedupe``."""
    splits = data.splits()
    leaking: dict[str, set[str]] = {name: set() for name in splits}
    for a, b in leak_pairs(splits):
        leaking[b].add(a)
    digests = {name: [image_digest(image) for image in split.images] for name, split in splits.items()}
    kept, dropped = {}, {}
    for name, split in splits.items():
        seen = set().union(*(digests[a] for a in leaking[name])) if leaking[name] else set()
        keep = np.array([i for i, d in enumerate(digests[name]) if d not in seen], dtype=np.int64)
        kept[name] = split if len(keep) == len(split) else split.subset(keep)
        if name != "train":
            dropped[name] = len(split) - len(keep)
    extra = {name: kept[name] for name in data.extra_tests}
    return dataclasses.replace(data, val=kept["val"], test=kept["test"], extra_tests=extra), dropped


def catalogue_name(task_name: str) -> str | None:
    """The catalogue task a task name (or data file stem) refers to, or None for user data.

    Exact catalogue names (case, spaces, underscores forgiven); a MedMNIST-style size suffix is dropped
    (``pneumoniamnist_28`` -> ``pneumoniamnist``, ``kermany_cxr_64`` -> ``kermany-cxr``); a path or a
    ``.npz`` name counts by its stem.
    """
    name = str(task_name)
    if "/" in name or name.endswith(".npz"):
        name = Path(name).stem
    for candidate in (name, re.sub(r"[-_ ]\d+$", "", name)):
        try:
            return get_task(candidate).name
        except MedvtabError:
            continue
    return None


def leakage_warnings(task_name: str, backbones_pretrained_on: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    """One message per (backbone, pre-training task) pair built from the same images as ``task_name``.

    ``backbones_pretrained_on`` is ``[(backbone name, BackboneInfo.pretrained_on), ...]``. A task that is not
    in the catalogue (user data) gives no warning; pre-training names that are not catalogue tasks
    (``lvd-142m``, ``pmc-15m``) cannot be matched to images and are passed over.
    """
    task = catalogue_name(task_name)
    if task is None:
        return []
    out = []
    for backbone, pretrained_on in backbones_pretrained_on:
        if isinstance(pretrained_on, str):
            pretrained_on = (pretrained_on,)
        known = tuple(n for n in pretrained_on if catalogue_name(n) is not None)
        for other in overlapping_sources(task, tuple(catalogue_name(n) for n in known)):
            what = f"{other} itself" if other == task else f"{other}, which shares source images with {task}"
            out.append(f"backbone '{backbone}' was pre-trained on {what}: results on it are not a fair test")
    return out
