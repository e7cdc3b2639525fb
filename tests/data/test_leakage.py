"""Leakage (medvtab.data.leakage): the one image digest, first copies, and backbones pre-trained on a task's
own source images."""
from __future__ import annotations

import numpy as np
import pytest

from medvtab.data.leakage import drop_evaluation_duplicates, first_copies, image_digest, leak_pairs, leakage_warnings, catalogue_name
from medvtab.data.taskdata import Split, TaskData


def test_image_digest_is_of_pixels_and_shape():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 4, 1), dtype=np.uint8)
    assert image_digest(image) == image_digest(image.copy())
    assert image_digest(image) == image_digest(np.asfortranarray(image))  # memory layout does not count
    assert image_digest(image) != image_digest(image.reshape(4, 6, 1))  # same bytes, another shape
    other = image.copy()
    other[0, 0, 0] ^= 1
    assert image_digest(image) != image_digest(other)


def test_first_copies_keep_the_first_of_each_identical_image():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 3, 3, 1), dtype=np.uint8)
    split = Split(images[[0, 1, 0, 2, 1, 3]], np.zeros(6, dtype=np.int64))
    assert first_copies(split).tolist() == [0, 1, 3, 5]


def test_leak_pairs_are_those_with_a_fitted_or_selecting_side():
    assert leak_pairs(["train", "val", "test", "unseen"]) == [
        ("train", "val"), ("train", "test"), ("train", "unseen"), ("val", "test"), ("val", "unseen")]


def test_leakage_warnings():
    (msg,) = leakage_warnings("pneumoniamnist", [("tiny-medical", ("kermany-cxr",))])
    assert msg == ("backbone 'tiny-medical' was pre-trained on kermany-cxr, which shares source images with "
                   "pneumoniamnist: results on it are not a fair test")
    assert leakage_warnings("my-own-scans", [("tiny-medical", ("kermany-cxr",))]) == []  # user data
    assert leakage_warnings("retinamnist", [("tiny-medical", ("kermany-cxr",))]) == []
    # unregistered pre-training sets are passed over; data file stems and paths resolve to the task
    assert leakage_warnings("pneumoniamnist_28", [("dinov2", ("lvd-142m",)), ("m", ("kermany-cxr",))]) != []
    assert len(leakage_warnings("/x/kermany_cxr_64.npz", [("a", ("pneumoniamnist",)), ("b", ("kermany-cxr",))])) == 2
    assert "itself" in leakage_warnings("kermany-cxr", [("b", ("kermany-cxr",))])[0]
    assert catalogue_name("bad") is None and catalogue_name("BreastMNIST") == "breastmnist"


def image(value: int) -> np.ndarray:
    return np.full((4, 4, 1), value, dtype=np.uint8)


def split(*values: int) -> Split:
    return Split(np.stack([image(v) for v in values]), np.arange(len(values)) % 2, None,
                 np.arange(len(values)), None)


@pytest.mark.parametrize("extra", [False, True])
def test_which_side_of_each_leak_is_dropped(extra):
    """Validation loses what train holds; test sets lose what train or validation hold; two test sets may share
    images (neither is fitted on), and copies inside one split stay."""
    data = TaskData("t", "t", train=split(1, 2, 3), val=split(2, 4, 5, 5), test=split(1, 4, 6, 7), num_classes=2,
                    class_names=["a", "b"], extra_tests={"unseen": split(3, 5, 7, 8)} if extra else {})
    deduped, dropped = drop_evaluation_duplicates(data)
    assert dropped == ({"val": 1, "test": 2, "unseen": 2} if extra else {"val": 1, "test": 2})
    assert [int(x[0, 0, 0]) for x in deduped.val.images] == [4, 5, 5]
    assert [int(x[0, 0, 0]) for x in deduped.test.images] == [6, 7]
    assert deduped.test.index.tolist() == [2, 3]  # pool positions kept: splits.json rebuilds the same split
    if extra:
        assert [int(x[0, 0, 0]) for x in deduped.extra_tests["unseen"].images] == [7, 8]
