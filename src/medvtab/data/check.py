"""Data checks: find the defects that silently spoil a benchmark number before a model is trained on them.

:func:`check_task` checks a loaded :class:`~medvtab.data.taskdata.TaskData` (the engine calls it before
training); :func:`check_source` checks anything :func:`~medvtab.data.loading.load_task` accepts, and also what
only the source shows: every ImageFolder file is decoded (a truncated or unreadable file is named), and a defect that
makes ``load_task`` itself refuse the task becomes a failed check instead of an exception (``labels in range``
for the label defects it refuses, else ``load``; the data checks are then reported as skipped).

Errors (``CheckReport.ok`` is False, ``medvtab data check`` exits 1):

- ``labels in range``: a label below 0 or at/after ``num_classes``.
- ``empty classes``: a class index in ``0..num_classes-1`` with no training image. ``load_task`` infers
  ``num_classes`` as max label + 1 where the source names no classes, so train labels {0, 1, 9} make classes
  2..8 empty; where the source names its classes, a named class without training images is empty too.
- ``images readable``: ImageFolder files that do not decode (all are tried; the rest of the checks then run on
  the readable ones).
- ``duplicates across splits``: identical images (:func:`~medvtab.data.leakage.image_digest`) in two splits
  of which one is fitted on (train) or selects the model (val); a test image that is also a training image
  measures memory, not generalisation. Two evaluation sets (test and a further test set in ``TaskData.extra_tests``) may
  share images.
- ``patients across splits``: a patient id in more than one split, same pairs (only where the splits carry
  ``patient_ids``; a task without them shows this check as skipped).
- ``tiny splits``: a split with no images at all.

Warnings (reported, ``ok`` stays True):

- ``duplicates across splits (source's own split)``: cross-split duplicates that are *known* to be in a
  public source's official split, pinned image by image in
  :data:`~medvtab.data.leakage.OFFICIAL_SPLIT_DUPLICATES` (found by this check on the MedMNIST v2 files in
  /work/shared/data: breastmnist_28 has one train/test copy, labelled malignant in train and normal/benign
  in test; pneumoniamnist_28 has 8 images in both train and val).
  They are shown every time, with their indices, but do not fail the check: the official split is what
  published results use. Any other cross-split duplicate, in the same file or elsewhere, is an error.
- ``duplicates within a split``: only where the copies carry different labels (label noise); identical
  copies with the same label are listed as context (not leakage) and counted in the stats.
- ``class imbalance``: largest / smallest non-empty training class > 10.
- ``tiny splits``: a split with fewer than 10 images, or a class with fewer than 2 images in an evaluation
  split (val, test, further test sets).

:func:`~medvtab.data.leakage.leakage_warnings` is separate: it needs the backbones, which a data check does not
load.
"""
from __future__ import annotations

import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medvtab.data.images import read_image
from medvtab.data.leakage import image_digest, leak_pairs, official_source
from medvtab.data.loading import class_folder_files, load_task, resolve_task
from medvtab.data.taskdata import TaskData
from medvtab.errors import MedvtabError, first_line

SPLITS = ("train", "val", "test")
IMBALANCE_RATIO = 10.0
MIN_SPLIT_IMAGES = 10
MIN_EVAL_PER_CLASS = 2
EXAMPLES = 5  # index pairs / file names / patient ids shown per finding

SOURCE_SPLIT = "duplicates across splits (source's own split)"
# Every check, in report order. A check that could not run (the task did not load) is reported as "skip".
CHECKS = ("load", "images readable", "labels in range", "empty classes", "duplicates across splits",
          SOURCE_SPLIT, "duplicates within a split", "patients across splits", "class imbalance", "tiny splits")
# Split pairs that share patients by design, per evaluation protocol (medvtab.data.protocols): vtab1k draws
# train and val image-wise; patient-ood splits the seen patients' images image-wise into train/val/seen test
# (only the "unseen" test set must be patient-disjoint). For check_task(..., allow_shared_patients=...).
PROTOCOL_SHARED_PATIENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "standard": (), "fewshot": (), "vtab1k": (("train", "val"),),
    "patient-ood": (("train", "val"), ("train", "test"), ("val", "test")),
}
LOAD_LABEL_ERROR = re.compile(r"negative label|label -?\d+ out of range")

@dataclass(frozen=True)
class Finding:
    check: str
    level: str  # "error", "warning" or "info" (context shown in the report; never changes the verdict)
    message: str

    def __str__(self) -> str:
        return f"{self.check}: {self.message}"


@dataclass
class CheckReport:
    """What :func:`check_task` / :func:`check_source` found. ``ok`` is False when any error was found."""
    task: str
    source: str
    findings: list[Finding] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    load_failed: bool = False  # load_task refused the task: the data checks did not run

    @property
    def errors(self) -> list[str]:
        return [str(f) for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[str]:
        return [str(f) for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def status(self, check: str) -> str:
        """``fail``, ``warn``, ``pass`` or ``skip`` (did not run)."""
        levels = {f.level for f in self.findings if f.check == check}
        if "error" in levels or (check == "load" and self.load_failed):
            return "fail"
        if "warning" in levels:
            return "warn"
        return "pass" if check in self.ran else "skip"

    def checks(self) -> list[dict]:
        """One row per check in report order (the source-split duplicate category only where it applies)."""
        rows = []
        for name in CHECKS:
            status = self.status(name)
            if name == SOURCE_SPLIT and status in ("pass", "skip"):
                continue
            if name == "images readable" and status == "skip":
                continue  # only meaningful for ImageFolder sources
            messages = [f.message for f in self.findings if f.check == name]
            if status == "skip" and not messages and self.load_failed:
                messages = ["not run: the task did not load"]
            rows.append({"name": name, "status": status, "messages": messages})
        return rows

    def summary(self) -> str:
        """One line: the verdict, counts and the checks that failed or warned."""
        failed = [r["name"] for r in self.checks() if r["status"] == "fail"]
        warned = [r["name"] for r in self.checks() if r["status"] == "warn"]
        n_err, n_warn = len(self.errors), len(self.warnings)
        counts = f"{n_err} error{'s' * (n_err != 1)}, {n_warn} warning{'s' * (n_warn != 1)}"
        head = f"data check {self.task}: {'passed' if self.ok else 'FAILED'} ({counts})"
        parts = ([f"failed: {', '.join(failed)}"] if failed else []) + \
                ([f"warned: {', '.join(warned)}"] if warned else [])
        return head + (f"; {'; '.join(parts)}" if parts else "")

    def to_dict(self) -> dict:
        return {"task": self.task, "source": self.source, "ok": self.ok, "errors": self.errors,
                "warnings": self.warnings, "checks": self.checks(), "stats": self.stats}

    def render(self) -> str:
        """The per-check report for people (plain text)."""
        lines = [f"data check: {self.task} ({self.source})"]
        s = self.stats
        if "sizes" in s:
            sizes = ", ".join(f"{k} {v}" for k, v in s["sizes"].items())
            lines.append(f"  {s['num_classes']} classes; {sizes}; images {s['image_shape']}")
        if s.get("patients"):
            per = ", ".join(f"{k} {v}" for k, v in s["patients"]["per_split"].items())
            lines.append(f"  patients: {per}")
        for row in self.checks():
            lines.append(f"  {row['status'].upper():<4}  {row['name']}")
            lines.extend(f"        {m}" for m in row["messages"])
        return "\n".join(lines)


def _ranges(values) -> str:
    """[2, 3, 4, 8] -> '2..4, 8'."""
    values = sorted(int(v) for v in values)
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}..{v}")
            start = None
    return ", ".join(out)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith('s') else 's'}"


def _splits(data: TaskData) -> dict:
    """train, val, test and any further test sets (``TaskData.extra_tests``, where the loader has them)."""
    splits = data.splits() if hasattr(data, "splits") else {}
    return splits or {name: getattr(data, name) for name in SPLITS}


def _check_labels(data: TaskData, report: CheckReport) -> None:
    k = data.num_classes
    for name, split in _splits(data).items():
        labels = np.asarray(split.labels if split.targets is None else split.targets)
        if split.targets is not None:  # multi-label: k labels, each 1 / 0 / -1 (the loader refuses the rest)
            bad = ~np.isin(labels, (-1, 0, 1)) | (labels.shape[1] != k)
        else:
            bad = (labels < 0) | (labels >= k)
        if bad.any():
            values = sorted(set(labels[bad].tolist()))
            report.findings.append(Finding(
                "labels in range", "error",
                f"{name}: {_plural(int(bad.sum()), 'label')} outside 0..{k - 1} "
                f"(values {', '.join(map(str, values[:EXAMPLES]))}{', ...' if len(values) > EXAMPLES else ''})"))
    if len(data.class_names) != k:
        report.findings.append(Finding("labels in range", "error",
                                       f"{len(data.class_names)} class names for {k} classes"))
    report.ran.append("labels in range")


def _counts(split, k: int) -> np.ndarray:
    """Images per class; for a multi-label task, positive images per label."""
    if split.targets is not None:
        return (np.asarray(split.targets) == 1).sum(0)[:k]
    labels = np.asarray(split.labels)
    labels = labels[(labels >= 0) & (labels < k)]
    return np.bincount(labels, minlength=k)[:k]


def _check_classes(data: TaskData, report: CheckReport) -> None:
    k = data.num_classes
    counts = {name: _counts(split, k) for name, split in _splits(data).items()}
    train = counts["train"]
    empty = np.flatnonzero(train == 0)
    if len(empty):
        names = [data.class_names[i] for i in empty[:EXAMPLES]] if len(data.class_names) == k else []
        named = f" ({', '.join(repr(n) for n in names)}{', ...' if len(empty) > EXAMPLES else ''})" \
            if names and names != [str(i) for i in empty[:EXAMPLES]] else ""
        report.findings.append(Finding(
            "empty classes", "error",
            f"{_plural(len(empty), 'class')} of {k} with no training image: {_ranges(empty)}{named}"
            + (f" (num_classes = max train label + 1 = {k}: are the labels 0-based and contiguous?)"
               if len(data.class_names) == k and data.class_names == [str(i) for i in range(k)] else "")))
    report.ran.append("empty classes")

    present = train[train > 0]
    if len(present) >= 2 and present.max() / present.min() > IMBALANCE_RATIO:
        hi, lo = int(np.argmax(np.where(train > 0, train, -1))), int(np.argmin(np.where(train > 0, train, np.inf)))
        report.findings.append(Finding(
            "class imbalance", "warning",
            f"train: largest class {hi} has {int(train[hi])} images, smallest non-empty class {lo} has "
            f"{int(train[lo])} (ratio {train[hi] / train[lo]:.1f} > {IMBALANCE_RATIO:g}); prefer balanced "
            f"accuracy / macro F1"))
    report.ran.append("class imbalance")

    for name, split in _splits(data).items():
        if len(split) == 0:
            report.findings.append(Finding("tiny splits", "error", f"{name}: no images (training and every "
                                                                   f"evaluation need at least one)"))
        elif len(split) < MIN_SPLIT_IMAGES:
            report.findings.append(Finding("tiny splits", "warning",
                                           f"{name}: {_plural(len(split), 'image')} (< {MIN_SPLIT_IMAGES})"))
    for name in [n for n in counts if n != "train"]:
        few = [c for c in range(k) if counts[name][c] < MIN_EVAL_PER_CLASS and c not in set(empty.tolist())]
        if few:
            report.findings.append(Finding(
                "tiny splits", "warning",
                f"{name}: {_plural(len(few), 'class')} with fewer than {MIN_EVAL_PER_CLASS} images: "
                f"{_ranges(few)} (per-class metrics on it are noise)"))
    report.ran.append("tiny splits")
    report.stats["class_counts"] = {name: c.tolist() for name, c in counts.items()}


def _check_duplicates(data: TaskData, report: CheckReport) -> None:
    splits = _splits(data)
    where: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for name, split in splits.items():
        for i, image in enumerate(split.images):
            where[image_digest(image)][name].append(i)

    def label(split: str, i: int):
        s = splits[split]
        return int(s.labels[i]) if s.targets is None else tuple(s.targets[i].tolist())

    pairs_of = {d: [(a, b) for a, b in leak_pairs(splits) if a in w and b in w] for d, w in where.items()}
    stats = {}
    for known in (False, True):
        groups = {d: where[d] for d, p in pairs_of.items() if p and (official_source(d) is not None) == known}
        if not groups:
            continue
        pairs = defaultdict(list)  # (split_a, split_b) -> [(i, j, labels differ)]
        conflicting = 0
        for d, w in groups.items():
            conflicting += len({label(s, i) for a, b in pairs_of[d] for s in (a, b) for i in w[s]}) > 1
            for a, b in pairs_of[d]:
                pairs[(a, b)] += [(i, j, label(a, i) != label(b, j)) for i in w[a] for j in w[b]]
        per_pair = []
        for (a, b), ps in pairs.items():
            shown = ", ".join(f"{a}[{i}]={b}[{j}]" + (" (labels differ)" if c else "") for i, j, c in ps[:EXAMPLES])
            per_pair.append(f"{a}/{b}: {_plural(len(ps), 'pair')} ({shown}{', ...' if len(ps) > EXAMPLES else ''})")
        text = (f"{_plural(len(groups), 'distinct image')} in more than one split; " + "; ".join(per_pair)
                + (f"; {conflicting} of them with different labels in different splits" if conflicting else ""))
        if known:
            sources = sorted({official_source(d) for d in groups})
            report.findings.append(Finding(
                SOURCE_SPLIT, "warning",
                text + f" - known duplicates of the official {', '.join(sources)} split, kept as published"))
        else:
            report.findings.append(Finding("duplicates across splits", "error",
                                           text + "; an evaluation image that is also fitted on measures memory "
                                                  "(`medvtab train --dedupe` drops such images)"))
        stats["known" if known else "unknown"] = {
            "images": len(groups), "pairs": {f"{a}/{b}": len(ps) for (a, b), ps in pairs.items()},
            "examples": {f"{a}/{b}": [[i, j] for i, j, _ in ps[:EXAMPLES]] for (a, b), ps in pairs.items()},
            "conflicting_labels": conflicting}
    report.ran += ["duplicates across splits", SOURCE_SPLIT]

    within = {}
    for name in splits:
        groups = [w[name] for w in where.values() if len(w.get(name, ())) > 1]
        if not groups:
            continue
        conflict = [g for g in groups if len({label(name, i) for i in g}) > 1]
        within[name] = {"images": len(groups), "copies": sum(map(len, groups)), "conflicting_labels": len(conflict)}
        report.findings.append(Finding(
            "duplicates within a split", "info",
            f"{name}: {_plural(len(groups), 'image')} stored more than once ({sum(map(len, groups))} copies)"
            + ("" if conflict else ", same labels (not leakage)")))
        if conflict:
            shown = "; ".join("=".join(f"{name}[{i}]" for i in g[:4]) for g in conflict[:EXAMPLES])
            report.findings.append(Finding(
                "duplicates within a split", "warning",
                f"{name}: {_plural(len(conflict), 'image')} stored more than once with different labels "
                f"({shown}{'; ...' if len(conflict) > EXAMPLES else ''})"))
    report.ran.append("duplicates within a split")
    report.stats["duplicates"] = {"across_splits": stats.get("unknown", {"images": 0}),
                                  "across_splits_source_split": stats.get("known", {"images": 0}),
                                  "within_split": within}


def _check_patients(data: TaskData, report: CheckReport, allowed: set[tuple[str, str]]) -> None:
    splits = _splits(data)
    ids = {name: getattr(split, "patient_ids", None) for name, split in splits.items()}
    if all(v is None for v in ids.values()):
        report.stats["patients"] = None
        report.findings.append(Finding("patients across splits", "info", "the splits carry no patient ids"))
        return
    sets = {}
    for name, split in splits.items():
        if ids[name] is None:
            if len(split):
                report.findings.append(Finding("patients across splits", "error",
                                               f"{name}: no patient ids while other splits have them"))
            continue
        pids = np.asarray(ids[name])
        if len(pids) != len(split):
            report.findings.append(Finding("patients across splits", "error",
                                           f"{name}: {len(pids)} patient ids for {len(split)} images"))
        sets[name] = set(pids.tolist())
    shared = {}
    for a, b in leak_pairs(sets):
        both = sorted(sets[a] & sets[b], key=str)
        if both:
            shared[f"{a}/{b}"] = both
    for key in [k for k in shared if tuple(k.split("/")) in allowed]:
        report.findings.append(Finding("patients across splits", "info",
                                       f"{key}: {_plural(len(shared[key]), 'patient')} shared, as the protocol allows"))
    leaked = {k: v for k, v in shared.items() if tuple(k.split("/")) not in allowed}
    if leaked:
        every = set().union(*map(set, leaked.values()))
        detail = "; ".join(f"{k}: {len(v)} ({', '.join(map(str, v[:EXAMPLES]))}{', ...' if len(v) > EXAMPLES else ''})"
                           for k, v in leaked.items())
        report.findings.append(Finding(
            "patients across splits", "error",
            f"{_plural(len(every), 'patient')} in more than one split; {detail}; split by patient, not by image"))
    report.ran.append("patients across splits")
    report.stats["patients"] = {"per_split": {k: len(v) for k, v in sets.items()},
                                "shared": {k: len(v) for k, v in shared.items()}}


def check_task(data: TaskData, *, allow_shared_patients=()) -> CheckReport:
    """Check a loaded task: labels, empty classes, cross-split duplicates, patients, imbalance, tiny splits.

    ``allow_shared_patients``: split pairs (``("train", "test")`` or ``"train/test"``) that may share patients
    by design (shown as context, not an error); :data:`PROTOCOL_SHARED_PATIENTS` gives them per evaluation
    protocol. The default, none, is right for a task as loaded (the standard protocol).
    """
    allowed = set()
    for pair in allow_shared_patients:
        a, b = pair.split("/") if isinstance(pair, str) else pair
        allowed |= {(a, b), (b, a)}
    report = CheckReport(task=data.name, source=data.source)
    report.ran.append("load")
    shapes = sorted({tuple(s.images.shape[1:]) for s in _splits(data).values() if len(s)})
    report.stats.update({"num_classes": data.num_classes, "class_names": list(data.class_names),
                         "sizes": data.sizes(),
                         "image_shape": ", ".join("x".join(map(str, s)) for s in shapes) or "none",
                         "notes": list(data.notes)})
    _check_labels(data, report)
    _check_classes(data, report)
    _check_duplicates(data, report)
    _check_patients(data, report, allowed)
    return report


# ---------------------------------------------------------------------------------------------- sources

def _decode_all(files: list[Path]) -> list[tuple[Path, str]]:
    bad = []
    for f in files:
        try:
            read_image(f, 8)
        except MedvtabError as err:
            bad.append((f, str(err).removeprefix(f"{f}: ")))
        except Exception as err:  # noqa: BLE001 - a decoder failure of any kind is what this check reports
            bad.append((f, f"{type(err).__name__}: {first_line(err)}"))
    return bad


def check_source(task: str, *, seed: int = 0, image_size: int = 224,
                 data_root: str | Path | None = None) -> CheckReport:
    """Load ``task`` as training would (:func:`load_task`) and check it; see the module docstring.

    A task that names nothing loadable (a missing path, a file that is neither .npz nor a directory, a
    registered real set without its file) raises MedvtabError: a usage error, not a data defect. Every
    defect of the data itself ends up in the report.
    """
    path, name = resolve_task(task, data_root)
    if not (path.is_dir() or (path.is_file() and path.suffix == ".npz")):
        load_task(task, seed=seed, image_size=image_size, data_root=data_root)  # raises its one-line error
        raise MedvtabError(f"task '{task}': expected a .npz file or an ImageFolder directory")  # pragma: no cover
    bad: list[tuple[Path, str]] = []
    files: list[Path] = []
    if path.is_dir():
        files = [f for f, _, _ in class_folder_files(path)]  # what load_task reads
        bad = _decode_all(files)
    try:
        if bad:
            # Mirror the readable files (symlinks) so that the other checks still run, on what would load.
            skip = {f for f, _ in bad}
            with tempfile.TemporaryDirectory(prefix="medvtab-check-") as tmp:
                mirror = Path(tmp) / (name or "task")
                mirror.mkdir()
                for f in files:
                    if f not in skip:
                        target = mirror / f.relative_to(path)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.symlink_to(f.resolve())
                data = load_task(str(mirror), seed=seed, image_size=image_size)
            data.source = str(path)
        else:
            data = load_task(task, seed=seed, image_size=image_size, data_root=data_root)
    except MedvtabError as err:
        # load_task refuses some label defects itself (negative labels; labels past the named classes):
        # reported under the check they belong to. Anything else it refuses is a failed load.
        check = "labels in range" if LOAD_LABEL_ERROR.search(str(err)) else "load"
        report = CheckReport(task=name, source=str(path), load_failed=True)
        report.findings.append(Finding(check, "error", f"load_task refused the task: {err}"))
    else:
        report = check_task(data)
        if bad:
            report.stats["notes"].append(f"checks ran on the {len(files) - len(bad)} readable of {len(files)} "
                                         f"image files")
    if path.is_dir():
        report.ran.append("images readable")
        report.stats["image_files"] = len(files)
        if bad:
            shown = "; ".join(f"{f.relative_to(path)} ({why})" for f, why in bad[:EXAMPLES])
            report.findings.insert(0, Finding(
                "images readable", "error",
                f"{_plural(len(bad), 'file')} of {len(files)} do not decode: {shown}"
                f"{f'; ... ({len(bad) - EXAMPLES} more)' if len(bad) > EXAMPLES else ''}"))
            report.stats["unreadable_files"] = [str(f.relative_to(path)) for f, _ in bad]
    return report
