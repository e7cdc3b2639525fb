"""Evaluation protocols on real data: standard (incl. the pooled layout), vtab1k, fewshot and patient-ood.

The Kermany chest X-rays (with patient ids) and the other shared sets live in ``../shared/data`` beside the
project; tests that need a file from there skip, saying so, where it is absent. The bundled PneumoniaMNIST
copy is always there. Patient checks are made against the raw ``.npz`` arrays, not the loader's view of them.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medvtab.data.leakage import first_copies
from medvtab.data.loading import bundled_path, load_task
from medvtab.data.protocols import (Protocol, check_patient_disjoint, check_protocol, load_protocol_task,
                                    resplit, splits_record)
from medvtab.data.taskdata import Split
from medvtab.errors import MedvtabError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
KERMANY = SHARED / "kermany_cxr" / "kermany_cxr_28.npz"


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path.relative_to(SHARED.parent)} absent: ../shared/data absent or incomplete")
    return path


@pytest.fixture(scope="module")
def kermany_raw() -> dict[str, np.ndarray]:
    with np.load(need(KERMANY), allow_pickle=False) as npz:
        distinct = first_copies(Split(npz["images"], npz["labels"].reshape(-1)))
        return {"labels": npz["labels"].reshape(-1), "patient_ids": npz["patient_ids"].astype(str),
                "distinct": distinct}


def ood(seed: int, seen: int = 100, unseen: int = 60):
    return load_protocol_task(str(KERMANY), "patient-ood", seed=seed, seen=seen, unseen=unseen)


@pytest.fixture(scope="module")
def kermany_ood(kermany_raw):
    return ood(0)


# --- patient-ood --------------------------------------------------------------------------------------------

def test_patient_ood_on_real_kermany_is_patient_disjoint_with_s_and_u_patients(kermany_ood, kermany_raw):
    data, ids = kermany_ood, kermany_raw["patient_ids"]
    split_ids = {name: set(ids[split.index]) for name, split in data.splits().items()}  # from the raw arrays
    seen = split_ids["train"] | split_ids["val"] | split_ids["test"]
    assert not (split_ids["train"] | split_ids["val"]) & split_ids["unseen"]
    assert not seen & split_ids["unseen"]
    assert len(seen) == 100 and len(split_ids["unseen"]) == 60
    # every image of an unseen patient is in the unseen test, and of a seen patient in train/val/seen test
    # (byte-identical copies aside: the protocol keeps the first copy of each image, 32 of 5840 dropped)
    distinct = kermany_raw["distinct"]
    assert len(ids) - len(distinct) == 32
    assert sorted(data.extra_tests["unseen"].index) == sorted(np.intersect1d(
        np.flatnonzero(np.isin(ids, list(split_ids["unseen"]))), distinct))
    seen_index = np.concatenate([data.train.index, data.val.index, data.test.index])
    assert sorted(seen_index) == sorted(np.intersect1d(np.flatnonzero(np.isin(ids, list(seen))), distinct))
    # the loader's labels and ids are the raw rows the indices name
    for split in data.splits().values():
        assert np.array_equal(split.labels, kermany_raw["labels"][split.index])
        assert np.array_equal(split.patient_ids, ids[split.index])
    assert data.patient_counts()["unseen"] == 60
    assert data.sizes()["unseen"] == len(data.extra_tests["unseen"]) > 60


def test_patient_ood_seen_images_split_70_10_20_stratified(kermany_ood):
    sizes = kermany_ood.sizes()
    seen = sizes["train"] + sizes["val"] + sizes["test"]
    assert abs(sizes["train"] - 0.7 * seen) <= 2 and abs(sizes["val"] - 0.1 * seen) <= 2
    for split in (kermany_ood.train, kermany_ood.test, kermany_ood.extra_tests["unseen"]):
        assert set(split.labels) == {0, 1}  # both classes in each, patients were stratified by label


def test_patient_ood_is_deterministic_per_seed(kermany_ood):
    again, other = ood(0), ood(1)
    for name, split in kermany_ood.splits().items():
        assert np.array_equal(split.index, again.splits()[name].index), name
    assert set(kermany_ood.extra_tests["unseen"].patient_ids) != set(other.extra_tests["unseen"].patient_ids)


def test_patient_ood_refuses_more_patients_than_exist(kermany_raw):
    with pytest.raises(MedvtabError, match=r"'--seen' and '--unseen'.*only 3102 patients"):
        ood(0, seen=3000, unseen=200)


def test_patient_ood_needs_patient_ids():
    with pytest.raises(MedvtabError, match=r"'--protocol patient-ood'.*no patient ids"):
        load_protocol_task("pneumoniamnist", "patient-ood", seen=10, unseen=5)


def test_patient_disjoint_check_fails_on_a_leak():
    def split(*ids):
        return Split(np.zeros((len(ids), 2, 2, 1), np.uint8), np.zeros(len(ids), np.int64), np.array(ids))
    check_patient_disjoint(split("a", "b"), split("a"), split("c"), split("d"), seen=3, unseen_count=1)
    with pytest.raises(AssertionError, match="unseen patient"):
        check_patient_disjoint(split("a", "b"), split("d"), split("c"), split("d"), seen=4, unseen_count=1)
    with pytest.raises(AssertionError, match="expected 4"):
        check_patient_disjoint(split("a", "b"), split("a"), split("c"), split("d"), seen=4, unseen_count=1)


# --- standard on the pooled layout ---------------------------------------------------------------------

def test_standard_on_real_kermany_is_patient_disjoint_70_10_20(kermany_raw):
    data = load_task(str(KERMANY), seed=0)
    ids = kermany_raw["patient_ids"]
    parts = [data.train, data.val, data.test]
    assert sorted(np.concatenate([p.index for p in parts])) == list(range(len(ids)))  # each image once
    sets = [set(ids[p.index]) for p in parts]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sum(map(len, sets)) == len(set(ids)) == 3103
    fractions = np.array([len(p) for p in parts]) / len(ids)
    assert np.allclose(fractions, [0.7, 0.1, 0.2], atol=0.01), fractions
    assert data.class_names == ["normal", "pneumonia"] and data.pool_sizes == {"pool": 5840}


@pytest.fixture(scope="module")
def pooled_file(tmp_path_factory):
    """Real PneumoniaMNIST images in the pooled layout: 60 made-up patients of 1-6 images, one label each."""
    with np.load(bundled_path("pneumoniamnist")) as npz:
        images, labels = npz["train_images"][:600], npz["train_labels"][:600].reshape(-1)
    rng = np.random.default_rng(3)
    rows, pids, n = [], [], 0
    for c in (0, 1):
        pool = list(np.flatnonzero(labels == c))
        for p in range(30):
            k = int(rng.integers(1, 7))
            rows += pool[:k]
            pool = pool[k:]
            pids += [f"P{c}-{p:02d}"] * k
            n += k
    d = tmp_path_factory.mktemp("pooled")
    with_ids, without = d / "with_ids.npz", d / "without_ids.npz"
    np.savez(with_ids, images=images[rows], labels=labels[rows], patient_ids=np.array(pids),
             class_names=np.array(["normal", "pneumonia"]))
    np.savez(without, images=images[rows], labels=labels[rows])
    return with_ids, without, np.array(pids), labels[rows]


def test_pooled_layout_with_patient_ids_gives_patient_disjoint_standard_splits(pooled_file):
    path, _, pids, labels = pooled_file
    for seed in (0, 1, 2):
        data = load_task(str(path), seed=seed)
        sets = [set(s.patient_ids) for s in (data.train, data.val, data.test)]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]), seed
        assert sum(map(len, sets)) == 60
        assert sorted(np.concatenate([data.train.index, data.val.index, data.test.index])) == list(range(len(pids)))
        for s in (data.train, data.val, data.test):
            assert np.array_equal(s.patient_ids, pids[s.index]) and np.array_equal(s.labels, labels[s.index])
            assert set(s.labels) == {0, 1}, seed  # stratified: each class in each split
        assert abs(len(data.train) / len(pids) - 0.7) < 0.08
        assert data.patient_counts() == {"train": len(sets[0]), "val": len(sets[1]), "test": len(sets[2])}
    a, b = load_task(str(path), seed=0), load_task(str(path), seed=0)
    assert np.array_equal(a.test.index, b.test.index)
    assert not np.array_equal(a.test.index, load_task(str(path), seed=1).test.index)


def test_pooled_layout_without_patient_ids_is_stratified_70_10_20(pooled_file):
    _, path, _, labels = pooled_file
    data = load_task(str(path), seed=0)
    assert data.patient_counts() is None and data.train.patient_ids is None
    for c in (0, 1):
        n = (labels == c).sum()
        got = [(s.labels == c).sum() for s in (data.train, data.val, data.test)]
        assert sum(got) == n and abs(got[1] - 0.1 * n) <= 1 and abs(got[2] - 0.2 * n) <= 1, (c, got)


def test_patient_ood_on_a_pooled_file(pooled_file):
    path, *_ = pooled_file
    data = load_protocol_task(str(path), "patient-ood", seed=0, seen=20, unseen=10)
    assert data.patient_counts()["unseen"] == 10
    assert len(set(data.train.patient_ids) | set(data.val.patient_ids) | set(data.test.patient_ids)) == 20


# --- fewshot ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pneumonia():
    return load_task("pneumoniamnist", seed=0)


def test_fewshot_fraction_sizes(pneumonia):
    data = load_protocol_task("pneumoniamnist", "fewshot", seed=0, train_fraction=0.1)
    full = Counter(pneumonia.train.labels.tolist())
    got = Counter(data.train.labels.tolist())
    assert got == {c: int(np.floor(0.1 * n + 0.5)) for c, n in full.items()}
    assert abs(len(data.train) - 0.1 * len(pneumonia.train)) <= 1
    assert set(data.train.index) <= set(pneumonia.train.index)
    assert np.array_equal(data.val.index, pneumonia.val.index) and np.array_equal(data.test.index, pneumonia.test.index)


def test_fewshot_fraction_keeps_at_least_one_per_class():
    data = load_protocol_task("pneumoniamnist", "fewshot", seed=0, train_fraction=1e-6)
    assert sorted(data.train.labels.tolist()) == [0, 1]


def test_fewshot_shots_sizes_nesting_and_determinism():
    five = load_protocol_task("pneumoniamnist", "fewshot", seed=0, shots=5)
    assert Counter(five.train.labels.tolist()) == {0: 5, 1: 5}
    ten = load_protocol_task("pneumoniamnist", "fewshot", seed=0, shots=10)
    assert set(five.train.index) < set(ten.train.index)  # same seed: fewer shots nest in more
    again = load_protocol_task("pneumoniamnist", "fewshot", seed=0, shots=5)
    other = load_protocol_task("pneumoniamnist", "fewshot", seed=1, shots=5)
    assert np.array_equal(five.train.index, again.train.index)
    assert not np.array_equal(five.train.index, other.train.index)


def test_fewshot_shots_more_than_a_class_has():
    path = need(SHARED / "medmnist" / "breastmnist_28.npz")
    with pytest.raises(MedvtabError, match=r"'--shots': 200 .*class '0' has 147"):
        load_protocol_task(str(path), "fewshot", shots=200)


# --- vtab1k -------------------------------------------------------------------------------------------

def test_vtab1k_sizes_and_source(pneumonia):
    data = load_protocol_task("pneumoniamnist", "vtab1k", seed=0)
    assert data.sizes() == {"train": 800, "val": 200, "test": len(pneumonia.test)}
    pool = set(pneumonia.train.index) | set(pneumonia.val.index)
    assert set(data.train.index) <= pool and set(data.val.index) <= pool
    assert not set(data.train.index) & set(data.val.index)
    assert np.array_equal(data.test.index, pneumonia.test.index)
    # stratified: class shares follow train + val
    share = np.mean(np.concatenate([pneumonia.train.labels, pneumonia.val.labels]))
    assert abs(data.train.labels.mean() - share) < 0.01 and abs(data.val.labels.mean() - share) < 0.01


def test_vtab1k_is_deterministic_per_seed():
    a, b = (load_protocol_task("pneumoniamnist", "vtab1k", seed=4) for _ in range(2))
    c = load_protocol_task("pneumoniamnist", "vtab1k", seed=5)
    assert np.array_equal(a.train.index, b.train.index) and np.array_equal(a.val.index, b.val.index)
    assert not np.array_equal(a.train.index, c.train.index)


def test_vtab1k_on_pbc_and_kermany():
    pbc = load_protocol_task(str(need(SHARED / "pbc" / "pbc_28.npz")), "vtab1k", seed=0)
    assert pbc.sizes() == {"train": 800, "val": 200, "test": 3419}
    assert set(pbc.train.labels) == set(range(8)) and set(pbc.val.labels) == set(range(8))
    kermany = load_protocol_task(str(need(KERMANY)), "vtab1k", seed=0)
    assert (len(kermany.train), len(kermany.val)) == (800, 200)
    # drawn from the standard patient-disjoint train + val: no test patient in them
    assert not (set(kermany.train.patient_ids) | set(kermany.val.patient_ids)) & set(kermany.test.patient_ids)


def test_vtab1k_refuses_a_small_source():
    path = need(SHARED / "medmnist" / "breastmnist_28.npz")
    with pytest.raises(MedvtabError, match=r"'--protocol vtab1k'.*624 train \+ val images, needs at least 1000"):
        load_protocol_task(str(path), "vtab1k")


# --- splits records -----------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol,options", [("standard", {}), ("vtab1k", {}), ("fewshot", {"shots": 3})])
def test_splits_record_rebuilds_the_same_splits(protocol, options):
    chosen = check_protocol(protocol, **options)
    data = load_protocol_task("pneumoniamnist", chosen, seed=2)
    record = splits_record(data, chosen, seed=2)
    assert record["protocol"] == {"name": protocol, **options}
    assert record["pool"]["sizes"] == {"train": 4708, "val": 524, "test": 624}
    assert {k: v["images"] for k, v in record["splits"].items()} == data.sizes()
    back = resplit("pneumoniamnist", record)
    for name, split in data.splits().items():
        assert np.array_equal(split.images, back.splits()[name].images), name
        assert np.array_equal(split.labels, back.splits()[name].labels), name


def test_splits_record_of_patient_ood_counts_patients(kermany_ood):
    record = splits_record(kermany_ood, Protocol("patient-ood", seen=100, unseen=60), seed=0)
    assert record["splits"]["unseen"]["patients"] == 60
    assert set(record["splits"]) == {"train", "val", "test", "unseen"}
    back = resplit(str(KERMANY), record)
    assert np.array_equal(back.extra_tests["unseen"].patient_ids, kermany_ood.extra_tests["unseen"].patient_ids)


# --- option checks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol,options,words", [
    ("nope", {}, ["'--protocol'", "nope", "patient-ood"]),
    ("standard", {"seen": 3}, ["'--seen'", "patient-ood"]),
    ("fewshot", {"unseen": 3, "shots": 1}, ["'--unseen'", "patient-ood"]),
    ("vtab1k", {"train_fraction": 0.5}, ["'--train-fraction'", "fewshot"]),
    ("patient-ood", {"shots": 4, "seen": 1, "unseen": 1}, ["'--shots'", "fewshot"]),
    ("fewshot", {}, ["fewshot", "--train-fraction", "--shots"]),
    ("fewshot", {"train_fraction": 0.5, "shots": 2}, ["--train-fraction", "--shots", "both"]),
    ("fewshot", {"train_fraction": 0.0}, ["'--train-fraction'", "(0, 1]"]),
    ("fewshot", {"train_fraction": 1.5}, ["'--train-fraction'", "(0, 1]"]),
    ("fewshot", {"shots": 0}, ["'--shots'", "at least 1"]),
    ("patient-ood", {"seen": 5}, ["'--unseen'", "required"]),
    ("patient-ood", {"unseen": 5}, ["'--seen'", "required"]),
    ("patient-ood", {"seen": 0, "unseen": 5}, ["'--seen'", "at least 1"]),
    ("vtab1k", {"train_size": 50}, ["'--train-size'", "vtab1k"]),
    ("fewshot", {"shots": 2, "train_size": 50}, ["'--train-size'", "fewshot"]),
])
def test_invalid_protocol_options_name_the_option(protocol, options, words):
    with pytest.raises(MedvtabError) as err:
        check_protocol(protocol, **options)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_protocol_names_and_aliases():
    assert check_protocol("Patient_OOD", seen=1, unseen=1).name == "patient-ood"
    assert check_protocol("vtab-1k").name == "vtab1k"
    assert check_protocol("standard", train_size=10).record() == {"name": "standard"}
