"""Evaluation protocols: how a loaded task's images become train / val / test sets.

- ``standard``: the source's splits (or the seeded carve of :func:`medvtab.data.splits.carve_splits`: a pooled
  file is split 70/10/20, patient-disjoint where it has patient ids).
- ``vtab1k``: 800 train + 200 val images drawn (seeded, stratified by class) from the standard train + val;
  the standard test set, whole. The source needs at least 1,000 train + val images. Where the source has
  patient ids, train and val may share patients (they are drawn image-wise); the test set stays as
  disjoint from them as the standard split is.
- ``fewshot``: the standard train split subsampled per class, either a fraction ``train_fraction``
  (0 < F <= 1; each class keeps round(F * n), at least 1) or exactly ``shots`` images per class (an error
  where a class has fewer); val and test unchanged. For one seed, the images a smaller fraction or fewer
  shots keep are a subset of what a larger one keeps.
- ``patient-ood``: every image of the task pooled (all splits merged); ``seen`` + ``unseen`` patients drawn
  (seeded, stratified by each patient's majority label). The seen patients' images are split image-wise,
  stratified by class, 70/10/20 into train / val / a held-out "seen" test (so a seen patient may have images
  in train and in the seen test: that test measures generalisation to new images of known patients). Every
  image of the unseen patients forms the "unseen" test set; no unseen patient has an image in train or val
  (checked on every build).

Every protocol is deterministic per seed. :func:`splits_record` gives what a run writes to ``splits.json``:
for each split the positions of its images in the source pool (the source's splits concatenated in the
order train, val, test; the rows of a pooled file), its image count and, where known, its patient count;
:func:`resplit` rebuilds exactly those splits from it.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medvtab.data.leakage import first_copies
from medvtab.data.loading import load_task
from medvtab.data.splits import group_labels, partition, stratified_take, subsample_train
from medvtab.data.taskdata import Split, TaskData, merge_splits
from medvtab.errors import MedvtabError

PROTOCOLS = ("standard", "vtab1k", "fewshot", "patient-ood")
_ALIASES = {"vtab-1k": "vtab1k", "few-shot": "fewshot", "patientood": "patient-ood", "ood": "patient-ood"}
VTAB_TRAIN, VTAB_VAL = 800, 200
OOD_FRACTIONS = (0.7, 0.1, 0.2)  # seen patients' images: train, val, seen test
SPLITS_FILE = "splits.json"
_CARVE_NOTES = ("pooled layout:", "validation split carved", "test split carved")  # from carve_splits
_TAGS = {"vtab1k": 1001, "fewshot": 1002, "patient-ood": 1003}  # one random stream per protocol and seed


@dataclass(frozen=True)
class Protocol:
    name: str = "standard"
    train_fraction: float | None = None
    shots: int | None = None
    seen: int | None = None
    unseen: int | None = None

    def record(self) -> dict:
        """The protocol and the options it uses, JSON-ready."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def check_protocol(protocol: str = "standard", *, train_fraction: float | None = None, shots: int | None = None,
                   seen: int | None = None, unseen: int | None = None,
                   train_size: int | None = None) -> Protocol:
    """Validate a protocol and its options together (nothing is loaded); one-line errors name the option."""
    name = re.sub(r"[\s_]+", "-", str(protocol).strip().lower())
    name = _ALIASES.get(name, name)
    if name not in PROTOCOLS:
        raise MedvtabError(f"option '--protocol': unknown protocol '{protocol}'; choose from {', '.join(PROTOCOLS)}")
    for option, value, owner in (("--train-fraction", train_fraction, "fewshot"), ("--shots", shots, "fewshot"),
                                 ("--seen", seen, "patient-ood"), ("--unseen", unseen, "patient-ood")):
        if value is not None and name != owner:
            raise MedvtabError(f"option '{option}': only with --protocol {owner} (got --protocol {name})")
    if train_size is not None and name in ("vtab1k", "fewshot"):
        how = "800 train images" if name == "vtab1k" else "the train size (use --train-fraction or --shots)"
        raise MedvtabError(f"option '--train-size': not with --protocol {name}, which fixes {how}")
    if name == "fewshot":
        if (train_fraction is None) == (shots is None):
            raise MedvtabError("option '--protocol fewshot': give exactly one of --train-fraction and --shots"
                               + (" (got both)" if shots is not None else ""))
        if train_fraction is not None and not 0 < train_fraction <= 1:
            raise MedvtabError(f"option '--train-fraction': must be in (0, 1], got {train_fraction}")
        if shots is not None and shots < 1:
            raise MedvtabError(f"option '--shots': must be at least 1, got {shots}")
    if name == "patient-ood":
        for option, value in (("--seen", seen), ("--unseen", unseen)):
            if value is None:
                raise MedvtabError(f"option '{option}': required by --protocol patient-ood "
                                   f"(the number of {option[2:]} patients)")
            if value < 1:
                raise MedvtabError(f"option '{option}': must be at least 1, got {value}")
    return Protocol(name, train_fraction, shots, seen, unseen)


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([abs(int(seed)), _TAGS[name]])


def _vtab1k(data: TaskData, seed: int) -> TaskData:
    pool = merge_splits(data.train, data.val)
    need = VTAB_TRAIN + VTAB_VAL
    if len(pool) < need:
        raise MedvtabError(f"option '--protocol vtab1k': task '{data.name}' has {len(pool)} train + val images, "
                           f"needs at least {need} ({VTAB_TRAIN} train + {VTAB_VAL} val)")
    rng = _rng(seed, "vtab1k")
    chosen, _ = stratified_take(pool.labels, need, rng)
    drawn = pool.subset(chosen)
    val_pos, train_pos = stratified_take(drawn.labels, VTAB_VAL, rng)
    note = (f"vtab1k: {VTAB_TRAIN} train + {VTAB_VAL} val images drawn from the {len(pool)} train + val images "
            f"(stratified, seeded); test unchanged ({len(data.test)} images)")
    return dataclasses.replace(data, train=drawn.subset(train_pos), val=drawn.subset(val_pos),
                               notes=[*data.notes, note])


def _fewshot(data: TaskData, protocol: Protocol, seed: int) -> TaskData:
    labels = data.train.labels
    counts = np.bincount(labels, minlength=data.num_classes)
    if protocol.shots is not None:
        short = [(data.class_names[c], int(n)) for c, n in enumerate(counts) if n < protocol.shots]
        if short:
            listed = ", ".join(f"'{c}' has {n}" for c, n in short)
            raise MedvtabError(f"option '--shots': {protocol.shots} train images per class asked, but class "
                               f"{listed} in task '{data.name}'")
    rng = _rng(seed, "fewshot")
    kept = []
    for c, n in enumerate(counts):  # one permutation per class, whatever is taken: smaller sets nest in larger
        order = rng.permutation(np.flatnonzero(labels == c))
        if protocol.shots is not None:
            k = protocol.shots
        else:
            k = min(int(n), max(1, int(np.floor(protocol.train_fraction * n + 0.5)))) if n else 0
        kept.append(order[:k])
    kept = np.sort(np.concatenate(kept))
    how = (f"{protocol.shots} per class" if protocol.shots is not None
           else f"fraction {protocol.train_fraction} of each class, at least 1")
    note = (f"fewshot: train subsampled from {len(labels)} to {len(kept)} images ({how}, seeded); "
            f"val and test unchanged")
    return dataclasses.replace(data, train=data.train.subset(kept), notes=[*data.notes, note])


def check_patient_disjoint(train: Split, val: Split, seen_test: Split, unseen: Split, seen: int,
                           unseen_count: int) -> None:
    """Raise AssertionError unless no unseen patient is in train/val/seen test and the counts are right."""
    seen_ids = set(np.concatenate([train.patient_ids, val.patient_ids, seen_test.patient_ids]).tolist())
    unseen_ids = set(unseen.patient_ids.tolist())
    leaked = seen_ids & unseen_ids
    if leaked:
        raise AssertionError(f"patient-ood: {len(leaked)} unseen patient(s) also in train/val/seen test, "
                             f"e.g. {sorted(leaked)[:3]}")
    if len(seen_ids) != seen or len(unseen_ids) != unseen_count:
        raise AssertionError(f"patient-ood: {len(seen_ids)} seen and {len(unseen_ids)} unseen patients, "
                             f"expected {seen} and {unseen_count}")


def _patient_ood(data: TaskData, protocol: Protocol, seed: int) -> TaskData:
    splits = [data.train, data.val, data.test, *data.extra_tests.values()]
    if any(s.patient_ids is None for s in splits):
        raise MedvtabError(f"option '--protocol patient-ood': task '{data.name}' has no patient ids (a pooled .npz "
                           f"needs a 'patient_ids' array, a split .npz '{{split}}_patient_ids' arrays)")
    pool = merge_splits(*splits)
    # Byte-identical copies (a patient's repeated image, or one image filed under two patient ids) would land
    # in two splits once the seen patients' images are split image-wise: keep the first copy of each.
    distinct = first_copies(pool)
    dropped = len(pool) - len(distinct)
    pool = pool.subset(distinct)
    group, sizes, glabel = group_labels(pool.labels, pool.patient_ids)
    seen, unseen = protocol.seen, protocol.unseen
    if seen + unseen > len(sizes):
        raise MedvtabError(f"options '--seen' and '--unseen': {seen} + {unseen} patients asked, but task "
                           f"'{data.name}' has only {len(sizes)} patients")
    rng = _rng(seed, "patient-ood")
    drawn, _ = stratified_take(glabel, seen + unseen, rng)
    unseen_pos, seen_pos = stratified_take(glabel[drawn], unseen, rng)
    seen_groups, unseen_groups = drawn[seen_pos], drawn[unseen_pos]
    seen_split = pool.subset(np.flatnonzero(np.isin(group, seen_groups)))
    unseen_split = pool.subset(np.flatnonzero(np.isin(group, unseen_groups)))
    if len(seen_split) < len(OOD_FRACTIONS):
        raise MedvtabError(f"option '--seen': the {seen} seen patients have {len(seen_split)} images, need at "
                           f"least {len(OOD_FRACTIONS)} (train, val and seen test)")
    parts = partition(seen_split.labels, OOD_FRACTIONS, rng)
    train, val, seen_test = (seen_split.subset(p) for p in parts)
    check_patient_disjoint(train, val, seen_test, unseen_split, seen, unseen)
    note = (f"patient-ood: {seen} seen patients ({len(seen_split)} images, split image-wise 70/10/20 into train/"
            f"val/seen test, stratified) and {unseen} unseen patients ({len(unseen_split)} images: the unseen test)"
            f", drawn from {len(sizes)} patients stratified by label, seeded"
            + (f"; {dropped} byte-identical copies of other images dropped from the pool first" if dropped else ""))
    kept_notes = [n for n in data.notes if not n.startswith(_CARVE_NOTES)]  # those splits were pooled again
    return dataclasses.replace(data, train=train, val=val, test=seen_test, extra_tests={"unseen": unseen_split},
                               notes=[*kept_notes, note])


def apply_protocol(data: TaskData, protocol: Protocol, seed: int) -> TaskData:
    """``data`` as loaded (standard splits) -> the protocol's splits; ``data`` itself is left as it was."""
    if protocol.name == "standard":
        return data
    if protocol.name == "vtab1k":
        return _vtab1k(data, seed)
    if protocol.name == "fewshot":
        return _fewshot(data, protocol, seed)
    return _patient_ood(data, protocol, seed)


def load_protocol_task(task: str, protocol: str | Protocol = "standard", *, seed: int = 0, image_size: int = 224,
                       train_size: int | None = None, data_root: str | Path | None = None,
                       train_fraction: float | None = None, shots: int | None = None, seen: int | None = None,
                       unseen: int | None = None) -> TaskData:
    """Load ``task`` and build the protocol's splits; ``train_size`` then subsamples train (standard,
    patient-ood)."""
    if not isinstance(protocol, Protocol):
        protocol = check_protocol(protocol, train_fraction=train_fraction, shots=shots, seen=seen, unseen=unseen,
                                  train_size=train_size)
    data = load_task(task, seed=seed, image_size=image_size, data_root=data_root)
    return subsample_train(apply_protocol(data, protocol, seed), train_size, seed)


def splits_record(data: TaskData, protocol: Protocol, seed: int) -> dict:
    """What ``splits.json`` holds: enough to rebuild every split exactly (see :func:`resplit`)."""
    splits = {}
    for name, split in data.splits().items():
        if split.index is None:
            raise MedvtabError(f"split '{name}' of task '{data.name}' has no pool positions to record")
        row = {"images": len(split)}
        if split.patient_ids is not None:
            row["patients"] = split.num_patients
        row["indices"] = split.index.tolist()
        splits[name] = row
    return {
        "task": data.name, "source": data.source, "seed": seed, "protocol": protocol.record(),
        "pool": {"order": list(data.pool_sizes), "sizes": dict(data.pool_sizes),
                 "about": "indices are positions in the source's splits concatenated in this order "
                          "('pool': the rows of a pooled .npz); an ImageFolder's files are sorted by class, "
                          "then path"},
        "splits": splits,
    }


def resplit(task: str, record: dict, *, image_size: int = 224, data_root: str | Path | None = None) -> TaskData:
    """The splits a ``splits.json`` record describes, rebuilt from the same source."""
    data = load_task(task, seed=int(record.get("seed", 0)), image_size=image_size, data_root=data_root)
    try:
        want_sizes, rows = record["pool"]["sizes"], record["splits"]
        indices = {name: np.asarray(row["indices"], dtype=np.int64) for name, row in rows.items()}
    except (KeyError, TypeError) as err:
        raise MedvtabError(f"splits record: missing field {err}") from None
    if dict(data.pool_sizes) != dict(want_sizes):
        raise MedvtabError(f"task '{task}': its source splits {data.pool_sizes} differ from the recorded "
                           f"{want_sizes}; not the same source")
    pool = merge_splits(data.train, data.val, data.test)
    total = len(pool)
    for name, idx in indices.items():
        if len(idx) and (idx.min() < 0 or idx.max() >= total):
            raise MedvtabError(f"splits record: split '{name}' has positions outside 0..{total - 1}")
    built = {name: pool.subset(idx) for name, idx in indices.items()}
    for name in ("train", "val", "test"):
        if name not in built:
            raise MedvtabError(f"splits record: no '{name}' split")
    extra = {name: split for name, split in built.items() if name not in ("train", "val", "test")}
    return dataclasses.replace(data, train=built["train"], val=built["val"], test=built["test"], extra_tests=extra,
                               notes=[*data.notes, "splits rebuilt from a splits record"])
