"""Loading a task: a bundled name, a registered real set under a data root, a ``.npz``, a prepared directory
or an ImageFolder, into a :class:`~medvtab.data.taskdata.TaskData`.

Two ``.npz`` layouts are read (by :func:`read_npz`, the one ``.npz`` reader):

- MedMNIST-style splits: ``train_images`` / ``train_labels`` and optional ``val_*`` / ``test_*`` (and optional
  ``{split}_patient_ids``). A missing validation or test split is carved from train
  (:func:`medvtab.data.splits.carve_splits`).
- pooled: ``images``, ``labels``, optional ``patient_ids``, optional ``class_names`` and no split keys (other
  arrays, e.g. Kermany's ``subtype`` and ``original_split``, are ignored). The pool is split 70/10/20 into
  train/val/test, patient-disjoint where it has patient ids (:mod:`medvtab.data.splits`).

Labels of shape ``(N, L)`` with ``L > 1`` are multi-label (see :mod:`medvtab.data.taskdata`). A prepared
directory is read by :mod:`medvtab.data.manifest`; an ImageFolder (``root/CLASS/**`` or
``root/{train,val,test}/CLASS/**``) is decoded by :func:`medvtab.data.images.read_image`.
"""
from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np

from medvtab.data.catalogue import get_task
from medvtab.data.images import IMAGE_SUFFIXES, grey_to_rgb_if_mixed, read_image
from medvtab.data.manifest import is_prepared, load_prepared
from medvtab.data.splits import carve_splits, subsample_train
from medvtab.data.taskdata import Split, TaskData, multilabel_split
from medvtab.errors import MedvtabError, first_line

BUNDLED = {"retinamnist": "retinamnist_28.npz", "pneumoniamnist": "pneumoniamnist_28.npz",
           "breastmnist": "breastmnist_28.npz", "kermany-cxr": "kermany_cxr_28.npz"}
# Registered real sets (names in medvtab.data.catalogue) -> their file under the data root. A bundled copy
# inside the package (BUNDLED) takes precedence.
REAL_SETS = {
    "retinamnist": "medmnist/retinamnist_28.npz",
    "pneumoniamnist": "medmnist/pneumoniamnist_28.npz",
    "breastmnist": "medmnist/breastmnist_28.npz",
    "pbc": "pbc/pbc_28.npz",
    "kermany-cxr": "kermany_cxr/kermany_cxr_28.npz",
}
DATA_ENV = "MEDVTAB_DATA"


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


def registered_class_names(task: str) -> list[str] | None:
    """The class names the task registry publishes for a bundled or registered set (its files carry none)."""
    key = _registered_name(task)
    return get_task(key).class_names if key is not None else None


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


def check_npz_sizes(path: Path) -> None:
    """Refuse, before anything is allocated, an ``.npz`` whose arrays declare more bytes than their members hold
    (a forged header: numpy would first allocate what it declares) or more than this machine's memory."""
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if not member.filename.endswith(".npy"):
                    continue
                with archive.open(member) as f:
                    read_header = (np.lib.format.read_array_header_1_0 if np.lib.format.read_magic(f) == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(f)
                    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                    if declared > member.file_size - f.tell():
                        raise MedvtabError(f"{path}: array '{member.filename[:-4]}' declares shape {tuple(shape)} "
                                           f"({_gib(declared)}) but its file holds {member.file_size} bytes; the "
                                           f"file is corrupt or forged")
                total += declared
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return  # not a plain zip of .npy files: np.load below gives the error
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    if memory and total > memory:
        raise MedvtabError(f"{path}: its arrays need {_gib(total)}, more than this machine's {_gib(memory)} of "
                           f"memory")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def read_npz(path: Path) -> dict:
    """The ``.npz`` as parts: ``train`` / ``val`` / ``test`` splits or a ``pool``, plus ``class_names`` where
    given (the two layouts of the module docstring). Every ``.npz`` medvtab reads goes through here."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):  # np.load would call it pickled data
        raise MedvtabError(f"{path}: not an .npz file (an .npz is a zip archive of .npy arrays, as numpy.savez "
                           f"writes)")
    check_npz_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise MedvtabError(f"{path}: not a readable .npz file ({first_line(err)})") from None
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


def class_folder_files(root: Path, match=None) -> Iterator[tuple[Path, str, str]]:
    """(file, class, split) for every file of ``root/CLASS/**`` (split "") or ``root/{train,val,test}/CLASS/**``,
    in load order: split, class folder, path (as ``sorted(folder.rglob("*"))`` orders it). ``match(file)`` picks
    the files (default: an image suffix). Yielded one at a time: a walk of 200,000 files holds no list of them."""
    split_dirs = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    tops = [(root / s, s) for s in split_dirs] if split_dirs else [(root, "")]
    match = match or (lambda f: f.suffix.lower() in IMAGE_SUFFIXES)
    for top, split in tops:
        for d in sorted(p for p in top.iterdir() if p.is_dir()):
            yield from ((f, d.name, split) for f in _files_in_path_order(d) if match(f))


def _files_in_path_order(folder: Path) -> Iterator[Path]:
    """The files under ``folder`` (symlinked files included, symlinked folders not entered, as ``rglob``) in the
    order of ``sorted(folder.rglob("*"))``: paths compare part by part, so a depth-first walk over each folder's
    entries sorted by name gives that order without holding every path."""
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: os.path.normcase(e.name))
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            yield from _files_in_path_order(folder / entry.name)
        elif entry.is_file():
            yield folder / entry.name


def read_image_folder(root: Path, size: int) -> dict:
    """``root/CLASS/*.png`` or ``root/{train,val,test}/CLASS/*.png`` as parts (see :func:`read_npz`)."""
    files = [(f, c, split or "train") for f, c, split in class_folder_files(root)]
    if not any(split == "train" for _, _, split in files):
        raise MedvtabError(f"{root}: expected class folders with images (root/CLASS/*.png or root/train/CLASS/...)")
    class_names = sorted({c for _, c, _ in files})
    index = {c: i for i, c in enumerate(class_names)}
    out: dict = {"class_names": class_names}
    for name in ("train", "val", "test"):
        chosen = [(f, index[c]) for f, c, split in files if split == name]
        if chosen:
            images = grey_to_rgb_if_mixed([read_image(f, size) for f, _ in chosen])
            out[name] = Split(np.stack(images), np.array([y for _, y in chosen], dtype=np.int64))
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
    :mod:`medvtab.data.manifest`) or ImageFolder directory) and load every split: the source's own, or carved
    as :mod:`medvtab.data.splits` says.

    ``image_size`` is used only where images must be resized to stack (ImageFolder); arrays (and a prepared
    directory's images) keep theirs.
    ``data_root``: where registered real sets live (default :func:`default_data_root`).
    """
    path, name = resolve_task(task, data_root)
    if is_prepared(path):  # written by `medvtab data prepare`: images memory-mapped, never decoded again
        name, parts = load_prepared(path)
    elif path.is_dir():
        parts = read_image_folder(path, image_size)
    elif path.suffix == ".npz" and path.is_file():
        parts = read_npz(path)
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
    class_names = parts.pop("class_names", None) or registered_class_names(task)
    num_classes = _label_range(path, parts, class_names)
    train, val, test, notes = carve_splits(parts, seed, path)
    if len(train) == 0:
        raise MedvtabError(f"{path}: the train split is empty")
    if num_classes < 2:
        raise MedvtabError(f"{path}: need at least 2 classes, found {num_classes}")
    data = TaskData(name, str(path), train, val, test, num_classes,
                    class_names or [str(i) for i in range(num_classes)], notes, pool_sizes)
    return subsample_train(data, train_size, seed)
