"""Atomic file and directory writes (no torch here, so light commands can use them too): a temp file or
directory renamed into place, so a failure or a kill leaves either nothing or the complete thing."""
from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from medvtab.errors import MedvtabError


def atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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

