"""Atomic file and directory writes (no torch here, so light commands can use them too): a temp file or
directory renamed into place, so a failure or a kill leaves either nothing or the complete thing."""
from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from medvtab.errors import MedvtabError


CAUSES = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
          errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EDQUOT: "disk quota exceeded",
          errno.ENOTDIR: "a parent is a file, not a directory", errno.EISDIR: "is a directory",
          errno.EEXIST: "exists and is not a directory"}
FULL = 1 << 20  # bytes free below which a failed write is put down to a full disk


def cannot_write(path: Path, err: OSError) -> MedvtabError:
    """One line naming the path and why it cannot be written."""
    return MedvtabError(f"{path}: cannot write: {CAUSES.get(err.errno, err.strerror or type(err).__name__)}")


def atomic_write(path: Path, write) -> None:
    """``write(tmp)`` a temporary sibling of ``path``, then rename it into place; an unwritable place (read-only,
    full, not a directory) is a :class:`MedvtabError` naming the path and the cause, and no temporary is left."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise cannot_write(path, err) from None
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise cannot_write(path, err) from None
    except RuntimeError:  # torch.save reports a full disk as "[enforce fail ...] unexpected pos"
        full = shutil.disk_usage(path.parent).free < FULL
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise cannot_write(path, OSError(errno.ENOSPC, "No space left on device")) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_output_dir(out: Path) -> None:
    """Create the output directory ``out`` (and its parents); a file in its place, a read-only or full file system
    is a :class:`MedvtabError` naming the path and the cause."""
    if out.exists() and not out.is_dir():
        raise MedvtabError(f"{out}: is a file, not a directory; choose a new --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise cannot_write(out, err) from None


def write_json(path: Path, obj) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, allow_nan=True)
            f.write("\n")
    atomic_write(Path(path), write)


def write_csv(path: Path, rows: list[dict]) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
            w.writeheader()
            w.writerows(rows)
    atomic_write(Path(path), write)


def check_new_dir(out: Path) -> None:
    """``out`` may become an output directory: it does not exist, or is empty."""
    if out.exists() and not out.is_dir():
        raise MedvtabError(f"{out}: is a file, not a directory; choose a new --out")
    if out.exists() and any(out.iterdir()):
        raise MedvtabError(f"{out}: output directory exists and is not empty; choose a new --out")


@contextmanager
def staged_dir(out: Path):
    """Yield a temporary sibling directory; on success it becomes ``out``, on failure it is removed."""
    check_new_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        yield stage
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise

