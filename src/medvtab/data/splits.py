"""Carving splits: the seeded, stratified ways images are divided into train / val / test and subsampled.

- A pooled source (no splits of its own) is split 70/10/20 into train/val/test, seeded and stratified; with
  patient ids the split is patient-disjoint (every image of a patient lands in one split, patients
  stratified by their majority label).
- A source without a validation split gets one carved (10 %, stratified, seeded) from train; a missing test
  split likewise (20 %).
- ``train_size`` subsamples the train split (stratified, seeded).

Evaluation protocols built on these are in :mod:`medvtab.data.protocols`.
"""
from __future__ import annotations

import numpy as np

from medvtab.data.taskdata import Split, TaskData
from medvtab.errors import MedvtabError

POOL_FRACTIONS = (0.7, 0.1, 0.2)  # train, val, test of a pooled source


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, carved): ``fraction`` of each class carved out, at least one where a class has two."""
    rng = np.random.default_rng(seed)
    carved = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = int(round(len(idx) * fraction))
        carved.append(idx[: max(n, 1 if len(idx) > 1 else 0)])
    carved = np.sort(np.concatenate(carved))
    kept = np.setdiff1d(np.arange(len(labels)), carved)
    return kept, carved


def apportion(counts, n: int) -> np.ndarray:
    """Split ``n`` across classes in proportion to ``counts`` (largest remainder): exactly ``n`` in all, never
    more than a class has, and at least one per non-empty class where ``n`` allows."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if not 0 <= n <= total:
        raise ValueError(f"cannot take {n} of {total}")
    quota = counts * (n / total) if total else np.zeros(len(counts))
    take = np.floor(quota).astype(np.int64)
    if n >= int((counts > 0).sum()):
        take = np.where(counts > 0, np.maximum(take, 1), 0)
    while take.sum() < n:  # give to the largest remainders first (ties: lower class)
        room = np.where(take < counts, quota - take, -np.inf)
        take[int(np.argmax(room))] += 1
    while take.sum() > n:  # the min-one rule overshot: take back where most above quota
        over = np.where(take > 1, take - quota, -np.inf)
        take[int(np.argmax(over))] -= 1
    return take


def stratified_take(labels: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions (taken, rest): exactly ``n`` drawn at random, classes in proportion, each sorted."""
    classes = np.unique(labels)
    counts = [int((labels == c).sum()) for c in classes]
    taken = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, apportion(counts, n))]
    taken = np.sort(np.concatenate(taken)) if taken else np.zeros(0, dtype=np.int64)
    return taken, np.setdiff1d(np.arange(len(labels)), taken)


def group_labels(labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group of each image as 0..G-1, images per group, majority label per group)."""
    _, inverse = np.unique(groups, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.zeros((int(inverse.max()) + 1 if len(inverse) else 0, int(labels.max()) + 1 if len(labels) else 1),
                      dtype=np.int64)
    np.add.at(counts, (inverse, labels), 1)
    return inverse, counts.sum(1), counts.argmax(1)


def partition(labels: np.ndarray, fractions, rng: np.random.Generator,
              groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Positions of each part (sorted), sizes in proportion to ``fractions``, stratified by label.

    With ``groups`` (patient ids) the parts are group-disjoint: groups are stratified by their majority
    label, shuffled, and each lands in the part its middle image falls in when the stratum's images are laid
    out in that order. Without, every image is its own group. Where a part other than the first comes out
    empty, the smallest group of the largest part moves there (if that part keeps at least one group).
    """
    if groups is None:
        inverse, sizes, glabel = np.arange(len(labels)), np.ones(len(labels), dtype=np.int64), labels
    else:
        inverse, sizes, glabel = group_labels(labels, groups)
    edges = np.cumsum(fractions) / np.sum(fractions)
    part_of_group = np.zeros(len(sizes), dtype=np.int64)
    for c in np.unique(glabel):
        members = rng.permutation(np.flatnonzero(glabel == c))
        ends = np.cumsum(sizes[members])
        middle = (ends - sizes[members] / 2) / ends[-1]
        part_of_group[members] = np.minimum(np.searchsorted(edges, middle, side="right"), len(edges) - 1)
    for k in range(1, len(edges)):
        if not (part_of_group == k).any():
            big = int(np.argmax(np.bincount(part_of_group, weights=sizes, minlength=len(edges))))
            donors = np.flatnonzero(part_of_group == big)
            if len(donors) > 1:
                part_of_group[donors[np.argmin(sizes[donors])]] = k
    part = part_of_group[inverse]
    return [np.flatnonzero(part == k) for k in range(len(edges))]


def carve_splits(parts: dict[str, Split], seed: int, source) -> tuple[Split, Split, Split, list[str]]:
    """(train, val, test, notes) from a source's ``train`` / ``val`` / ``test`` parts or its ``pool``, as the
    module docstring says. ``source`` names the source in errors."""
    parts = dict(parts)
    notes = []
    if "pool" in parts:
        pool = parts.pop("pool")
        if len(pool) == 0:
            raise MedvtabError(f"{source}: the pool ('images', 'labels') is empty")
        by_patient = pool.patient_ids is not None
        rng = np.random.default_rng([abs(seed), 1000])
        train_pos, val_pos, test_pos = partition(pool.labels, POOL_FRACTIONS, rng, pool.patient_ids)
        parts.update(train=pool.subset(train_pos), val=pool.subset(val_pos), test=pool.subset(test_pos))
        notes.append("pooled layout: split 70/10/20 into train/val/test ("
                     + ("patient-disjoint, patients stratified by label" if by_patient else "stratified")
                     + ", seeded)")
    train = parts["train"]
    if "val" not in parts:
        kept, carved = stratified_split(train.labels, 0.1, seed)
        parts["val"], train = train.subset(carved), train.subset(kept)
        notes.append("validation split carved from train (10%, stratified, seeded)")
    if "test" not in parts:
        kept, carved = stratified_split(train.labels, 0.2, seed + 1)
        parts["test"], train = train.subset(carved), train.subset(kept)
        notes.append("test split carved from train (20%, stratified, seeded)")
    return train, parts["val"], parts["test"], notes


def subsample_train(data: TaskData, train_size: int | None, seed: int) -> TaskData:
    """Keep ``train_size`` train images (stratified, seeded); the data unchanged where None or no fewer."""
    if train_size is None or train_size >= len(data.train):
        return data
    if train_size < data.num_classes:
        raise MedvtabError(f"option '--train-size': {train_size} is fewer than the {data.num_classes} classes")
    kept, _ = stratified_split(data.train.labels, 1 - train_size / len(data.train), seed + 2)
    data.train = data.train.subset(kept)
    data.notes.append(f"train split subsampled to {len(data.train)} images (stratified, seeded)")
    return data
