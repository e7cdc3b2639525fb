"""Carving splits (medvtab.data.splits): apportioning, stratified carving, the pool split."""
from __future__ import annotations

import numpy as np

from medvtab.data.splits import apportion, carve_splits, stratified_split
from medvtab.data.taskdata import Split


def test_apportion_is_exact_and_keeps_every_class():
    assert apportion([500, 300, 2], 100).tolist() == [62, 37, 1]
    assert apportion([10, 10], 3).sum() == 3 and apportion([7, 1, 1, 1], 3).sum() == 3  # fewer than the classes
    assert apportion([5, 0, 5], 4).tolist() == [2, 0, 2]
    for counts, n in (([7, 1, 1, 1], 4), ([1000, 1, 1], 10), ([3, 3, 3], 9)):
        got = apportion(counts, n)
        assert got.sum() == n and (got <= counts).all() and (got >= 1).all(), (counts, got)


def test_stratified_split_carves_each_class_and_keeps_the_rest():
    labels = np.array([0] * 30 + [1] * 10 + [2] * 2)
    kept, carved = stratified_split(labels, 0.1, seed=0)
    assert np.bincount(labels[carved]).tolist() == [3, 1, 1]  # at least one of a class that has two
    assert sorted(np.concatenate([kept, carved]).tolist()) == list(range(len(labels)))
    assert np.array_equal(carved, stratified_split(labels, 0.1, seed=0)[1])


def test_carve_splits_fills_in_what_the_source_lacks():
    labels = np.repeat([0, 1], 50)
    train = Split(np.zeros((100, 2, 2, 1), np.uint8), labels, index=np.arange(100))
    got_train, val, test, notes = carve_splits({"train": train}, seed=0, source="x")
    assert (len(got_train), len(val), len(test)) == (72, 10, 18) and len(notes) == 2
    pooled = carve_splits({"pool": train}, seed=0, source="x")
    assert [len(s) for s in pooled[:3]] == [70, 10, 20] and pooled[3][0].startswith("pooled layout:")
