"""Run directories: their file names and readers, and atomic writers (JSON, CSV, the tensor file and the
predictions).

A finished run directory holds config.json, splits.json, adapter.safetensors, log.csv (one row per epoch),
predictions.npz and metrics.json (last). predictions.npz (:func:`write_predictions`, read back by
:func:`read_predictions`, no pickles) holds, for each evaluation set the run scored, ``<set>_probs`` (float32:
class probabilities (N, K), or per-label sigmoids (N, L) for a multi-label task) and ``<set>_labels`` (int64:
class indices (N,), or (N, L) targets of 1 / 0 / -1 unknown): ``val`` (the validation pass of the best epoch,
whose weights the run keeps), ``test`` and, for patient-ood, ``unseen``; sets that were not scored are absent."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from medvtab.atomic import atomic_write, check_new_dir, staged_dir, write_csv, write_json
from medvtab.data.protocols import SPLITS_FILE
from medvtab.errors import MedvtabError, first_line

__all__ = ["CONFIG", "METRICS", "ADAPTER", "LOG", "PREDICTIONS", "CHECKPOINT", "read_result", "is_finished", "unreadable_result",
           "is_unstarted", "check_new_run_dir", "staged_run_dir", "resume_or_clear", "check_resumable", "atomic_write", "write_csv", "write_json",
           "write_tensors", "read_json", "read_tensors", "write_predictions", "read_predictions"]

CONFIG, METRICS, ADAPTER, LOG = "config.json", "metrics.json", "adapter.safetensors", "log.csv"
PREDICTIONS = "predictions.npz"
CHECKPOINT = "checkpoint.pt"  # the training state after the last finished epoch (removed once the run is done)


def read_result(run: Path) -> dict | None:
    """The run's metrics.json if it is finished, else None. A run is finished exactly when its metrics.json exists
    and holds a JSON object: the result files are written one by one, atomically, metrics.json last. One that
    cannot be read (a disk error, a hand edit) is not a result (:func:`unreadable_result`)."""
    try:
        with open(Path(run) / METRICS, "rb") as f:
            metrics = json.load(f)
    except (OSError, ValueError):  # missing, unreadable, not JSON or not UTF-8
        return None
    return metrics if isinstance(metrics, dict) else None


def is_finished(run: Path) -> bool:
    return read_result(run) is not None


def unreadable_result(run: Path) -> bool:
    """metrics.json is there but is not a result: the run has to be redone."""
    return (Path(run) / METRICS).is_file() and not is_finished(run)


def is_unstarted(out: Path) -> bool:
    """``out`` holds only what a run writes before its first epoch ends (config.json, splits.json): a run stopped
    then (Ctrl-C, SIGTERM, a non-finite loss) left nothing to resume, and its directory may be reused."""
    out = Path(out)
    return out.is_dir() and {p.name for p in out.iterdir()} <= {CONFIG, SPLITS_FILE}


def check_new_run_dir(out: Path) -> None:
    """``out`` may become a run directory: it does not exist, is empty, or holds a run stopped before its first
    epoch ended (:func:`is_unstarted`: it is started again there); an unfinished run is named as such."""
    out = Path(out)
    if (out / CHECKPOINT).is_file() and not is_finished(out):
        raise MedvtabError(f"{out}: holds an unfinished run; continue it with --resume {out}, or choose a new --out")
    if not is_unstarted(out):
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
    if is_unstarted(out):
        raise MedvtabError(f"{out}: the run was stopped before its first epoch ended, so there is nothing to resume; "
                           f"run the same command without --resume (it starts again in {out})")
    if not (out / CHECKPOINT).is_file():
        raise MedvtabError(f"{out}: no {CHECKPOINT} to resume from (not a run directory?); start a new run with "
                           f"--out")


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
        raise MedvtabError(f"{path}: not a readable safetensors file ({first_line(err)})") from None




def write_predictions(path: Path, sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """``sets``: evaluation set name (``val``, ``test``, ...) -> (probabilities, labels), only the sets scored;
    written as ``<name>_probs`` (float32) and ``<name>_labels`` (int64) in one .npz, atomically."""
    arrays = {}
    for name, (probs, labels) in sets.items():
        arrays[f"{name}_probs"] = np.asarray(probs, dtype=np.float32)
        arrays[f"{name}_labels"] = np.asarray(labels, dtype=np.int64)

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a path
            np.savez(f, **arrays)
    atomic_write(Path(path), write)


def read_predictions(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a :func:`write_predictions` file (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise MedvtabError(f"{path}: not found (a run finished before predictions were stored?)") from None
    except (OSError, ValueError) as err:  # not a zip, a torn file, or an object array
        raise MedvtabError(f"{path}: not a readable predictions file ({first_line(err)})") from None
