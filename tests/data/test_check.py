"""Data checks (medvtab.data.check) in-process: seeded defects are all found and clean real sets pass."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvtab.data.check import CHECKS, PROTOCOL_SHARED_PATIENTS, SOURCE_SPLIT, CheckReport, check_source, check_task
from medvtab.data.leakage import OFFICIAL_SPLIT_DUPLICATES, drop_evaluation_duplicates, image_digest
from medvtab.data.loading import load_task
from medvtab.data.taskdata import Split, TaskData
from medvtab.errors import MedvtabError

DATA = Path(os.environ.get("MEDVTAB_DATA", "/work/shared/data"))


def real(rel: str) -> Path:
    path = DATA / rel
    if not path.is_file():
        pytest.skip(f"real data file missing: {path}")
    return path


def images(rng, n, size=8):
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8)


def defects_npz(path: Path) -> Path:
    """One of each defect: train labels {0, 1, 9} (classes 2..8 empty), test[3] a byte copy of train[5],
    patient 'p-shared' in train and test."""
    rng = np.random.default_rng(0)
    train_y = np.array([0] * 12 + [1] * 12 + [9] * 6)
    val_y, test_y = np.array([0, 0, 1, 1, 9, 9]), np.array([0, 0, 1, 1, 9, 9])
    train_x, val_x, test_x = images(rng, 30), images(rng, 6), images(rng, 6)
    test_x[3] = train_x[5]
    train_p = np.array([f"p{i}" for i in range(30)], dtype="U16")
    train_p[7] = "p-shared"
    val_p = np.array([f"v{i}" for i in range(6)])
    test_p = np.array(["t0", "p-shared", "t2", "t3", "t4", "t5"])
    np.savez(path, train_images=train_x, train_labels=train_y, val_images=val_x, val_labels=val_y,
             test_images=test_x, test_labels=test_y, train_patient_ids=train_p, val_patient_ids=val_p,
             test_patient_ids=test_p)
    return path


def exact_bad_npz(path: Path) -> Path:
    """The case from the brief: 20 black images, y[0]=9, y[1]=1, rest 0; test the same images, y % 2."""
    y = np.zeros(20, dtype=np.int64)
    y[0], y[1] = 9, 1
    zeros = np.zeros((20, 28, 28), dtype=np.uint8)
    np.savez(path, train_images=zeros, train_labels=y, test_images=zeros, test_labels=y % 2)
    return path


def task(train, val, test, num_classes=2, **kw) -> TaskData:
    return TaskData("t", "memory", train, val, test, num_classes, [str(i) for i in range(num_classes)], **kw)


def statuses(report: CheckReport) -> dict[str, str]:
    return {row["name"]: row["status"] for row in report.checks()}


def test_seeded_npz_defects_are_all_found(tmp_path):
    report = check_source(str(defects_npz(tmp_path / "defects.npz")))
    assert not report.ok
    st = statuses(report)
    assert st["empty classes"] == "fail" and st["duplicates across splits"] == "fail"
    assert st["patients across splits"] == "fail" and st["load"] == "pass"
    errors = "\n".join(report.errors)
    assert "7 classes of 10 with no training image: 2..8" in errors
    assert "train[5]=test[3]" in errors
    assert "p-shared" in errors and "train/test: 1" in errors
    assert report.stats["duplicates"]["across_splits"]["pairs"] == {"train/test": 1}
    assert report.stats["patients"]["shared"] == {"train/test": 1}


def test_the_exact_bad_case_fails_on_empty_classes_and_duplicates(tmp_path):
    data = load_task(str(exact_bad_npz(tmp_path / "bad.npz")))
    assert data.num_classes == 10  # inferred as max label + 1: classes 2..8 have no image at all
    report = check_task(data)
    assert not report.ok
    assert statuses(report)["empty classes"] == "fail"
    assert any("2..8" in e for e in report.errors)
    assert statuses(report)["duplicates across splits"] == "fail"  # 20 identical black images in every split
    assert statuses(report)["class imbalance"] == "warn" and statuses(report)["tiny splits"] == "warn"


@pytest.mark.parametrize("labels, extra, needle", [
    (np.array([0, 1] * 10) - 1, {}, "negative label"),
    (np.array([0, 1] * 9 + [2, 2]), {"class_names": np.array(["a", "b"])}, "out of range"),
])
def test_label_defects_load_task_refuses_become_a_failed_check(tmp_path, labels, extra, needle):
    path = tmp_path / "labels.npz"
    np.savez(path, train_images=images(np.random.default_rng(1), 20), train_labels=labels, **extra)
    with pytest.raises(MedvtabError):
        load_task(str(path))
    report = check_source(str(path))  # no exception: a report
    assert not report.ok and report.load_failed
    assert statuses(report)["labels in range"] == "fail" and statuses(report)["load"] == "fail"
    assert needle in report.errors[0]
    assert statuses(report)["empty classes"] == "skip"


def test_unreadable_npz_is_a_failed_load_and_a_missing_one_a_usage_error(tmp_path):
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    report = check_source(str(broken))
    assert not report.ok and statuses(report)["load"] == "fail"
    with pytest.raises(MedvtabError, match="no such file"):
        check_source(str(tmp_path / "missing.npz"))


def test_labels_out_of_range_on_taskdata_built_directly():
    rng = np.random.default_rng(2)
    ok = Split(images(rng, 12)[..., None], np.array([0, 1] * 6))
    bad = Split(images(rng, 12)[..., None], np.array([0, 1] * 5 + [5, -1]))
    report = check_task(task(ok, ok.subset(np.arange(12)), bad))
    assert not report.ok and statuses(report)["labels in range"] == "fail"
    assert "test: 2 labels outside 0..1" in report.errors[0]


def test_patients_in_two_splits_on_taskdata_built_directly():
    rng = np.random.default_rng(3)

    def split(n, pids):
        return Split(images(rng, n)[..., None], np.array([0, 1] * (n // 2)), np.array(pids))

    train = split(20, [f"a{i // 2}" for i in range(20)])
    val = split(10, [f"b{i}" for i in range(10)])
    test = split(10, ["a3"] + [f"c{i}" for i in range(9)])
    report = check_task(task(train, val, test))
    assert not report.ok and statuses(report)["patients across splits"] == "fail"
    assert "1 patient in more than one split" in report.errors[0] and "a3" in report.errors[0]
    assert report.stats["patients"]["per_split"] == {"train": 10, "val": 10, "test": 10}
    # a protocol that shares patients by design (patient-ood's seen test) may allow the pair: context, not an error
    allowed = check_task(task(train, val, test), allow_shared_patients=PROTOCOL_SHARED_PATIENTS["patient-ood"])
    messages = {row["name"]: row["messages"] for row in allowed.checks()}["patients across splits"]
    assert allowed.ok and "train/test: 1 patient shared, as the protocol allows" in messages
    assert not check_task(task(train, val, test), allow_shared_patients=["train/val"]).ok
    # disjoint patients pass; a task without patient ids skips the check
    clean = task(train, val, split(10, [f"c{i}" for i in range(10)]))
    assert check_task(clean).ok and statuses(check_task(clean))["patients across splits"] == "pass"
    plain = Split(train.images, train.labels)
    assert statuses(check_task(task(plain, Split(val.images, val.labels), Split(test.images, test.labels)))
                    )["patients across splits"] == "skip"


def test_duplicates_between_two_evaluation_sets_are_not_leakage():
    rng = np.random.default_rng(4)
    train = Split(images(rng, 20)[..., None], np.array([0, 1] * 10))
    val = Split(images(rng, 10)[..., None], np.array([0, 1] * 5))
    test = Split(images(rng, 10)[..., None], np.array([0, 1] * 5))
    data = task(train, val, test)
    data.extra_tests = {"unseen": test.subset(np.arange(4))} if hasattr(data, "extra_tests") else {}
    assert check_task(data).ok
    data.val.images[2] = test.images[7]  # val selects the model: a val/test copy is leakage
    report = check_task(data)
    assert not report.ok and "val[2]=test[7]" in report.errors[0]


def test_warnings_do_not_fail_the_check():
    rng = np.random.default_rng(5)
    train = Split(images(rng, 110)[..., None], np.array([0] * 105 + [1] * 5))
    val = Split(images(rng, 5)[..., None], np.array([0, 0, 0, 0, 1]))
    test = Split(images(rng, 30)[..., None], np.array([0] * 15 + [1] * 15))
    report = check_task(task(train, val, test))
    assert report.ok and not report.errors
    st = statuses(report)
    assert st["class imbalance"] == "warn" and st["tiny splits"] == "warn"
    text = "\n".join(report.warnings)
    assert "ratio 21.0 > 10" in text and "val: 5 images (< 10)" in text and "val: 1 class with fewer than 2" in text


def test_unreadable_imagefolder_files_are_named_and_the_rest_is_checked(tmp_path):
    rng = np.random.default_rng(6)
    root = tmp_path / "folder"
    for c in ("benign", "malignant"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / c / f"{i:02d}.png")
    whole = (root / "benign" / "03.png").read_bytes()
    (root / "benign" / "03.png").write_bytes(whole[: len(whole) // 2])  # truncated PNG
    with pytest.raises(MedvtabError):
        load_task(str(root), image_size=16)
    report = check_source(str(root), image_size=16)
    assert not report.ok and statuses(report)["images readable"] == "fail"
    assert "1 file of 24 do not decode: benign/03.png" in report.errors[0]
    assert report.stats["unreadable_files"] == ["benign/03.png"]
    assert sum(report.stats["sizes"].values()) == 23  # the other checks ran on the readable files
    assert statuses(report)["empty classes"] == "pass" and report.task == "folder"


def test_clean_imagefolder_passes(tmp_path):
    rng = np.random.default_rng(7)
    for c in ("a", "b"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(15):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "f" / c / f"{i}.png")
    report = check_source(str(tmp_path / "f"), image_size=8)
    assert report.ok and statuses(report)["images readable"] == "pass"


# ------------------------------------------------------------------------------------------- real data

def test_real_breastmnist_passes_and_shows_its_known_cross_split_duplicate():
    report = check_source(str(real("medmnist/breastmnist_28.npz")))
    assert report.ok, report.errors
    assert statuses(report)["duplicates across splits"] == "pass"
    assert statuses(report)[SOURCE_SPLIT] == "warn"
    (warning,) = report.warnings
    # MedMNIST's official split has one image in both train and test, labelled differently on each side
    assert "train[115]=test[76] (labels differ)" in warning
    assert report.stats["duplicates"]["across_splits_source_split"]["pairs"] == {"train/test": 1}


def test_real_pneumoniamnist_passes_and_shows_its_known_cross_split_duplicates():
    report = check_source(str(real("medmnist/pneumoniamnist_28.npz")))
    assert report.ok, report.errors
    dup = report.stats["duplicates"]["across_splits_source_split"]
    assert dup["images"] == 8 and dup["pairs"] == {"train/val": 10} and dup["conflicting_labels"] == 0
    assert report.stats["duplicates"]["within_split"]["train"]["images"] == 18


def test_real_retinamnist_is_clean():
    report = check_source(str(real("medmnist/retinamnist_28.npz")))
    assert report.ok and not report.warnings
    assert report.stats["duplicates"]["across_splits"] == {"images": 0}


def test_the_known_duplicate_list_is_narrow():
    """Only the pinned images are downgraded: the same defect built anywhere else is an error."""
    assert set(OFFICIAL_SPLIT_DUPLICATES) == {"breastmnist", "pneumoniamnist"}
    assert sum(map(len, OFFICIAL_SPLIT_DUPLICATES.values())) == 9
    z = np.load(real("medmnist/breastmnist_28.npz"))
    assert image_digest(z["train_images"][115][..., None]) in OFFICIAL_SPLIT_DUPLICATES["breastmnist"]
    train = Split(z["train_images"][:40][..., None], z["train_labels"][:40, 0].astype(np.int64))
    test_x = np.concatenate([z["train_images"][:1], z["test_images"][:20]])[..., None]  # train[0] leaks into test
    test = Split(test_x, np.concatenate([z["train_labels"][:1, 0], z["test_labels"][:20, 0]]).astype(np.int64))
    report = check_task(task(train, test.subset(np.arange(1, 11)), test))
    assert not report.ok and statuses(report)["duplicates across splits"] == "fail"
    assert "train[0]=test[0]" in report.errors[0]


def test_real_pbc_28_split_has_cross_split_duplicates():
    """A real finding: the shared pbc_28 file's 70/10/20 split (not an official one) leaks 8 images."""
    report = check_source(str(real("pbc/pbc_28.npz")))
    assert not report.ok
    dup = report.stats["duplicates"]["across_splits"]
    assert dup["images"] == 8 and dup["pairs"] == {"train/val": 4, "train/test": 4}


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


def test_report_shape():
    rng = np.random.default_rng(8)
    s = Split(images(rng, 20)[..., None], np.array([0, 1] * 10))
    report = check_task(task(s, s.subset(np.arange(10, 20)), s.subset(np.arange(10, 20))))
    d = report.to_dict()
    assert set(d) == {"task", "source", "ok", "errors", "warnings", "checks", "stats"}
    assert [c["name"] for c in d["checks"]] == [c for c in CHECKS if c not in (SOURCE_SPLIT, "images readable")]
    assert d["ok"] is False and isinstance(report.ok, bool)  # val and test are copies of train
