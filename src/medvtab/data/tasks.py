"""Loading a task: a bundled name, a registered real set under a data root, a ``.npz`` or an ImageFolder.

Images are decoded once into a uint8 array ``(N, H, W, C)`` with C = 1 or 3; labels are int64 ``(N,)``.

Two ``.npz`` layouts are read:

- MedMNIST-style splits: ``train_images`` / ``train_labels`` and optional ``val_*`` / ``test_*`` (and optional
  ``{split}_patient_ids``). A missing validation split is carved (stratified, seeded) from train; a missing
  test split likewise.
- pooled: ``images``, ``labels``, optional ``patient_ids``, optional ``class_names`` and no split keys (other
  arrays, e.g. Kermany's ``subtype`` and ``original_split``, are ignored). The pool is split 70/10/20 into
  train/val/test, seeded and stratified; with patient ids the split is patient-disjoint (every image of a
  patient lands in one split, patients stratified by their majority label).

Multi-label sources (labels of shape ``(N, L)`` with ``L > 1``, values 1 positive, 0 negative, -1 unknown:
ignored by the loss and the metrics) keep those rows as ``Split.targets``; ``Split.labels`` then holds each
image's *stratum* (its first positive label, or ``L`` where it has none), which every split, subsample and
protocol stratifies on, as it stratifies on the class of a single-label task.

Every image keeps its position in the source *pool* (``Split.index``): the source's splits concatenated in
the order train, val, test (a pooled file: its rows; an ImageFolder: its files, sorted by class then path).
:mod:`medvtab.data.protocols` builds evaluation protocols on top of that and records the positions.
"""
from __future__ import annotations

import hashlib
import os
import re
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medvtab.errors import MedvtabError

BUNDLED = {"retinamnist": "retinamnist_28.npz", "pneumoniamnist": "pneumoniamnist_28.npz",
           "breastmnist": "breastmnist_28.npz", "kermany-cxr": "kermany_cxr_28.npz"}
# Registered real sets (names in medvtab.data.registry) -> their file under the data root. A bundled copy
# inside the package (BUNDLED) takes precedence.
REAL_SETS = {
    "retinamnist": "medmnist/retinamnist_28.npz",
    "pneumoniamnist": "medmnist/pneumoniamnist_28.npz",
    "breastmnist": "medmnist/breastmnist_28.npz",
    "pbc": "pbc/pbc_28.npz",
    "kermany-cxr": "kermany_cxr/kermany_cxr_28.npz",
}
DATA_ENV = "MEDVTAB_DATA"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
POOL_FRACTIONS = (0.7, 0.1, 0.2)  # train, val, test of a pooled source


@dataclass
class Split:
    images: np.ndarray
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
        return Split(self.images[index], self.labels[index],
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
    images = [s.images for s in splits]
    if len({im.shape[-1] for im in images}) > 1:  # grey and colour splits: promote all to RGB
        images = [np.repeat(im, 3, -1) if im.shape[-1] == 1 else im for im in images]
    if len({im.shape[1:] for im in images}) > 1:
        raise MedvtabError(f"cannot pool splits of different image shapes {sorted({im.shape[1:] for im in images})}")
    merged = Split(np.concatenate(images), np.concatenate([s.labels for s in splits]), pids, index, targets)
    return merged if index is None else merged.subset(np.argsort(index, kind="stable"))


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


def bundled_path(name: str) -> Path:
    return Path(str(resources.files("medvtab") / "assets" / "data" / BUNDLED[name]))


def shared_root(env_var: str, folder: str) -> Path | None:
    """``$env_var``, else a ``shared/<folder>`` folder beside the project if there is one, else None."""
    env = os.environ.get(env_var)
    if env:
        return Path(env)
    beside = Path(__file__).parents[3].parent / "shared" / folder
    return beside if beside.is_dir() else None


def default_data_root() -> Path | None:
    """``$MEDVTAB_DATA``, else a ``shared/data`` folder beside the project if there is one, else None."""
    return shared_root(DATA_ENV, "data")


def _registered_name(task: str) -> str | None:
    """The registered real-set name ``task`` means (case, spaces and underscores forgiven), if any."""
    if "/" in task or "\\" in task or task.endswith(".npz"):
        return None
    key = re.sub(r"[\s_/]+", "-", task.strip().lower())
    return key if key in REAL_SETS or key in BUNDLED else None


def resolve_task(task: str, data_root: str | Path | None = None) -> tuple[Path, str]:
    """(path, name) for a bundled name, a registered real set under the data root, or a path."""
    key = _registered_name(task)
    if key in BUNDLED:
        return bundled_path(key), key
    if key in REAL_SETS:
        root = Path(data_root) if data_root is not None else default_data_root()
        if root is None:
            raise MedvtabError(f"task '{task}': a registered real set, but no data root is set (pass --data-root "
                               f"DIR or set {DATA_ENV}); expected DIR/{REAL_SETS[key]}")
        path = root / REAL_SETS[key]
        if not path.is_file():
            raise MedvtabError(f"task '{task}': not found under data root {root} (expected {path})")
        return path, key
    path = Path(task)
    return path, path.stem if path.suffix == ".npz" else path.name


def image_digest(image: np.ndarray) -> str:
    """blake2b-128 of an image's shape and bytes (uint8 as loaded): equal digests = byte-identical images."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(tuple(image.shape)).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def first_copies(split: Split) -> np.ndarray:
    """Positions of the first occurrence of every distinct image (byte-identical copies after it dropped)."""
    seen: set[str] = set()
    keep = []
    for i, image in enumerate(split.images):
        digest = image_digest(image)
        if digest not in seen:
            seen.add(digest)
            keep.append(i)
    return np.array(keep, dtype=np.int64)


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


def multilabel_strata(targets: np.ndarray) -> np.ndarray:
    """Each row's first positive label, or ``L`` (the number of labels) where it has none."""
    positive = np.asarray(targets) == 1
    return np.where(positive.any(1), positive.argmax(1), positive.shape[1]).astype(np.int64)


def multilabel_split(images: np.ndarray, targets, patient_ids=None) -> Split:
    """A multi-label split: ``targets`` (N, L) of 1 / 0 / -1, stratified by :func:`multilabel_strata`."""
    targets = np.asarray(targets, dtype=np.int8)
    return Split(images, multilabel_strata(targets), patient_ids, None, targets)


def _check_split(name: str, images, labels, source: str, patient_ids=None) -> Split:
    """``name``: the key prefix, "train_" ... or "" for a pooled file. Labels of shape (N, L > 1) are
    multi-label targets (1 / 0 / -1)."""
    if images.dtype != np.uint8:
        raise MedvtabError(f"{source}: '{name}images' must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise MedvtabError(f"{source}: '{name}images' must have shape (N, H, W) or (N, H, W, 1|3), "
                           f"got {images.shape}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    multi = labels.ndim == 2 and labels.shape[1] > 1
    if multi and np.issubdtype(labels.dtype, np.integer) and not np.isin(labels, (-1, 0, 1)).all():
        raise MedvtabError(f"{source}: '{name}labels' of shape {labels.shape} is read as multi-label and must "
                           f"hold 1 (positive), 0 (negative) or -1 (unknown), found "
                           f"{sorted(set(np.unique(labels).tolist()) - {-1, 0, 1})[:5]}")
    if not multi and (labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer)):
        raise MedvtabError(f"{source}: '{name}labels' must be integer class indices of shape (N,) or (N, 1), "
                           f"or multi-label 1/0/-1 of shape (N, L), got {labels.dtype} {labels.shape}")
    if multi and not np.issubdtype(labels.dtype, np.integer):
        raise MedvtabError(f"{source}: '{name}labels' (multi-label, shape {labels.shape}) must be integers "
                           f"1 / 0 / -1, got {labels.dtype}")
    if len(labels) != len(images):
        raise MedvtabError(f"{source}: '{name}labels' has {len(labels)} entries for {len(images)} images")
    if not multi and len(labels) and labels.min() < 0:
        raise MedvtabError(f"{source}: '{name}labels' has negative label {labels.min()}")
    if patient_ids is not None:
        patient_ids = np.asarray(patient_ids)
        if patient_ids.shape != (len(labels),):
            raise MedvtabError(f"{source}: '{name}patient_ids' must have one id per image, shape ({len(labels)},), "
                               f"got {patient_ids.shape}")
        patient_ids = patient_ids.astype(str)
    if multi:
        return multilabel_split(np.ascontiguousarray(images), labels, patient_ids)
    return Split(np.ascontiguousarray(images), labels.astype(np.int64), patient_ids)


def _load_npz(path: Path) -> dict[str, Split]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise MedvtabError(f"{path}: not a readable .npz file ({str(err).splitlines()[0][:120]})") from None
    split_keys = [k for k in arrays if k.split("_", 1)[0] in ("train", "val", "test")]
    if not split_keys and "images" in arrays and "labels" in arrays:  # pooled layout
        pool = _check_split("", arrays["images"], arrays["labels"], str(path), arrays.get("patient_ids"))
        out = {"pool": pool}
        if "class_names" in arrays:
            out["class_names"] = [str(c) for c in arrays["class_names"]]
        return out
    if "train_images" not in arrays or "train_labels" not in arrays:
        raise MedvtabError(f"{path}: expected keys 'train_images' and 'train_labels' "
                           f"(optional 'val_*', 'test_*'), or a pooled 'images' and 'labels' "
                           f"(optional 'patient_ids'), found {sorted(arrays)}")
    splits = {}
    for name in ("train", "val", "test"):
        have = [f"{name}_images" in arrays, f"{name}_labels" in arrays]
        if any(have) and not all(have):
            raise MedvtabError(f"{path}: '{name}_images' and '{name}_labels' must come together")
        if all(have):
            splits[name] = _check_split(f"{name}_", arrays[f"{name}_images"], arrays[f"{name}_labels"], str(path),
                                        arrays.get(f"{name}_patient_ids"))
    with_ids = [name for name, split in splits.items() if split.patient_ids is not None]
    if with_ids and len(with_ids) != len(splits):
        raise MedvtabError(f"{path}: patient ids for {', '.join(with_ids)} only; give '{{split}}_patient_ids' "
                           f"for every split or none")
    if "class_names" in arrays:
        splits["class_names"] = [str(c) for c in arrays["class_names"]]
    return splits


def read_image(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            grey = img.mode in ("L", "I", "I;16", "F", "1")
            img = img.convert("L" if grey else "RGB").resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise MedvtabError(f"{path}: unreadable image ({str(err).splitlines()[0][:120]})") from None
    return arr[..., None] if arr.ndim == 2 else arr


def _class_folders(root: Path) -> dict[str, list[Path]]:
    classes = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            classes[d.name] = files
    return classes


def _load_image_folder(root: Path, size: int) -> dict:
    """``root/CLASS/*.png`` or ``root/{train,val,test}/CLASS/*.png``."""
    split_dirs = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    layout = {s: _class_folders(root / s) for s in split_dirs} if split_dirs else {"train": _class_folders(root)}
    if "train" not in layout or not layout["train"]:
        raise MedvtabError(f"{root}: expected class folders with images (root/CLASS/*.png or root/train/CLASS/...)")
    class_names = sorted({c for split in layout.values() for c in split})
    index = {c: i for i, c in enumerate(class_names)}
    out = {"class_names": class_names}
    for name, classes in layout.items():
        files = [(f, index[c]) for c, fs in classes.items() for f in fs]
        images = [read_image(f, size) for f, _ in files]
        channels = {im.shape[-1] for im in images}
        if len(channels) > 1:  # mixed grey and colour: promote all to RGB
            images = [np.repeat(im, 3, -1) if im.shape[-1] == 1 else im for im in images]
        out[name] = Split(np.stack(images), np.array([y for _, y in files], dtype=np.int64))
    return out


def _label_range(path: Path, parts: dict, class_names) -> int:
    present = [parts[name] for name in ("train", "val", "test", "pool") if name in parts]
    if any(s.targets is not None for s in present):  # multi-label: the label count is the targets' width
        widths = {s.targets.shape[1] if s.targets is not None else None for s in present}
        if len(widths) > 1:
            raise MedvtabError(f"{path}: splits disagree on multi-label width ({', '.join(map(str, widths))})")
        width = widths.pop()
        if class_names and len(class_names) != width:
            raise MedvtabError(f"{path}: {len(class_names)} class names for {width} labels")
        return width
    labels = {name: parts[name].labels for name in ("train", "val", "test", "pool") if name in parts}
    first = labels.get("train", labels.get("pool"))  # as before: the train labels define the classes
    if not class_names and not len(first):
        return 0  # an empty train split: reported as such by the caller
    num_classes = len(class_names) if class_names else int(first.max()) + 1
    for name, y in labels.items():
        if len(y) and y.max() >= num_classes:
            key = "labels" if name == "pool" else f"{name}_labels"
            raise MedvtabError(f"{path}: '{key}' has label {y.max()} out of range 0..{num_classes - 1}")
    return num_classes


def load_task(task: str, *, seed: int = 0, image_size: int = 224, train_size: int | None = None,
              data_root: str | Path | None = None) -> TaskData:
    """Resolve ``task`` (bundled name, registered real set, .npz path, a prepared directory (see
    :mod:`medvtab.data.manifest`) or ImageFolder directory) and load
    every split: the source's own, or carved as the module docstring says.

    ``image_size`` is used only where images must be resized to stack (ImageFolder); arrays (and a prepared
    directory's images) keep theirs.
    ``data_root``: where registered real sets live (default :func:`default_data_root`).
    """
    path, name = resolve_task(task, data_root)
    from medvtab.data.manifest import is_prepared, load_prepared

    if is_prepared(path):  # written by `medvtab data prepare`: images memory-mapped, never decoded again
        name, parts = load_prepared(path)
    elif path.is_dir():
        parts = _load_image_folder(path, image_size)
    elif path.suffix == ".npz" and path.is_file():
        parts = _load_npz(path)
    elif not path.exists():
        raise MedvtabError(f"task '{task}': no such file or directory, and not a bundled task "
                           f"({', '.join(BUNDLED)}) or a registered real set ({', '.join(REAL_SETS)})")
    else:
        raise MedvtabError(f"task '{task}': expected a .npz file or an ImageFolder directory")

    pool_sizes, offset = {}, 0
    for split_name in ("train", "val", "test", "pool"):
        if split_name in parts:
            n = len(parts[split_name])
            parts[split_name].index = np.arange(offset, offset + n)
            pool_sizes[split_name] = n
            offset += n
    class_names = parts.get("class_names")
    num_classes = _label_range(path, parts, class_names)
    notes = []
    if "pool" in parts:
        pool = parts.pop("pool")
        if len(pool) == 0:
            raise MedvtabError(f"{path}: the pool ('images', 'labels') is empty")
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
    if len(train) == 0:
        raise MedvtabError(f"{path}: the train split is empty")
    if num_classes < 2:
        raise MedvtabError(f"{path}: need at least 2 classes, found {num_classes}")
    data = TaskData(name, str(path), train, parts["val"], parts["test"], num_classes,
                    class_names or [str(i) for i in range(num_classes)], notes, pool_sizes)
    return subsample_train(data, train_size, seed)


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
