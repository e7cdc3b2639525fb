"""Run directories: their file names and readers, and atomic writers (JSON, CSV and the tensor file)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from medvtab.atomic import atomic_write, check_new_dir, staged_dir, write_csv, write_json
from medvtab.errors import MedvtabError

__all__ = ["CONFIG", "METRICS", "ADAPTER", "LOG", "CHECKPOINT", "is_finished", "check_new_run_dir", "staged_run_dir",
           "resume_or_clear", "check_resumable", "atomic_write", "write_csv", "write_json", "write_tensors",
           "read_json", "read_tensors"]

CONFIG, METRICS, ADAPTER, LOG = "config.json", "metrics.json", "adapter.safetensors", "log.csv"
CHECKPOINT = "checkpoint.pt"  # the training state after the last finished epoch (removed once the run is done)


def is_finished(run: Path) -> bool:
    """A run is finished exactly when its metrics.json exists: the result files are written one by one,
    atomically, metrics.json last."""
    return (Path(run) / METRICS).is_file()


def check_new_run_dir(out: Path) -> None:
    """``out`` may become a run directory: it does not exist, or is empty (an unfinished run is named as such)."""
    out = Path(out)
    if (out / CHECKPOINT).is_file() and not is_finished(out):
        raise MedvtabError(f"{out}: holds an unfinished run; continue it with --resume {out}, or choose a new --out")
    check_new_dir(out)


def staged_run_dir(out: Path):
    """:func:`medvtab.atomic.staged_dir` for a new run directory (checked by :func:`check_new_run_dir`)."""
    check_new_run_dir(out)
    return staged_dir(out)


def resume_or_clear(out: Path) -> bool:
    """True where ``out`` holds an unfinished run with a checkpoint; an unfinished run without one (killed in
    its first epoch: config and splits only) is removed. Only for directories medvtab owns (grid runs)."""
    out = Path(out)
    if (out / CHECKPOINT).is_file() and not is_finished(out):
        return True
    if out.is_dir() and not is_finished(out):
        shutil.rmtree(out)
    return False


def check_resumable(out: Path) -> None:
    """``out`` holds an unfinished run with a checkpoint."""
    out = Path(out)
    if is_finished(out):
        raise MedvtabError(f"{out}: this run has finished (metrics.json exists); nothing to resume")
    if not (out / CHECKPOINT).is_file():
        raise MedvtabError(f"{out}: no {CHECKPOINT} to resume from (the run was stopped before its first epoch "
                           f"ended, or this is not a run directory); start it again with a new --out")


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    atomic_write(Path(path), lambda tmp: save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, tmp))


def read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise MedvtabError(f"{path}: not found (is this a medvtab run directory?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MedvtabError(f"{path}: not valid JSON ({err})") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise MedvtabError(f"{path}: not found (is this a medvtab run directory?)") from None
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for corrupt files
        raise MedvtabError(f"{path}: not a readable safetensors file ({str(err)[:120]})") from None


