"""``--dedupe`` on the real files whose splits hold identical images: what it drops, and that the data check
then finds no duplicate across splits (the real PBC split leaks 8 images; PneumoniaMNIST's official split 8)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medvtab.data import Split, TaskData
from medvtab.data.check import SOURCE_SPLIT, check_task
from medvtab.data.leakage import drop_evaluation_duplicates
from medvtab.data.loading import load_task

DATA = Path(os.environ.get("MEDVTAB_DATA", "/work/shared/data"))


def real(rel: str) -> Path:
    path = DATA / rel
    if not path.is_file():
        pytest.skip(f"real data file missing: {path}")
    return path


def statuses(report) -> dict[str, str]:
    return {row["name"]: row["status"] for row in report.checks()}


def test_real_pbc_28_dedupe_drops_the_leaked_images_and_the_check_passes():
    data = load_task(str(real("pbc/pbc_28.npz")), seed=0, image_size=28)
    assert not check_task(data).ok
    deduped, dropped = drop_evaluation_duplicates(data)
    assert dropped == {"val": 4, "test": 4}
    assert deduped.sizes() == {"train": len(data.train), "val": len(data.val) - 4, "test": len(data.test) - 4}
    report = check_task(deduped)
    assert statuses(report)["duplicates across splits"] == "pass" and report.ok
    assert deduped.train is data.train  # training images are never dropped


def test_official_split_duplicates_are_dropped_too():
    data = load_task("pneumoniamnist", seed=0, image_size=28)
    assert any(f.check == SOURCE_SPLIT for f in check_task(data).findings)
    deduped, dropped = drop_evaluation_duplicates(data)
    assert dropped == {"val": 8, "test": 0}
    assert not any(f.check == SOURCE_SPLIT for f in check_task(deduped).findings)


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
