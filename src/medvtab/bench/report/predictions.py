"""What the report computes from the stored predictions of finished runs (``predictions.npz``, see
:mod:`medvtab.engine.rundir`): each file read once, the runs' decisions, pairwise disagreement between methods, and
the validation-chosen ensemble.

The ensemble of a (task, seed) is chosen on validation only: the methods are ranked by their best validation
selection score (:func:`~medvtab.engine.metrics.selection_score` of the stored validation probabilities), k is the
size in :data:`ENSEMBLE_SIZES` (or all of them) whose top-k mean probabilities score best on validation, and that
one ensemble is then scored once on test."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medvtab.bench.report.load import Run
from medvtab.bench.report.tables import Cell, pct_cell, row_key
from medvtab.engine import rundir
from medvtab.engine.metrics import THRESHOLD, classification_metrics, selection_score

ENSEMBLE_SIZES = (2, 3, 5)
ENSEMBLE_LABEL = "ensemble (top-k by validation)"  # its row in the main tables


def run_predictions(run: Run) -> dict[str, np.ndarray] | None:
    """The arrays of a finished run's predictions.npz (read once per file version), None where it has none (a run
    stored before predictions were)."""
    path = run.dir / rundir.PREDICTIONS
    if not run.finished or not path.is_file():
        return None
    stat = path.stat()
    return _read(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=512)
def _read(path: str, mtime_ns: int, size: int) -> dict[str, np.ndarray]:  # the file's version is in the key
    return rundir.read_predictions(Path(path))


def decisions(probs: np.ndarray, multi_label: bool) -> np.ndarray:
    """Predicted classes (N,), or 0/1 label decisions at :data:`THRESHOLD` (N, L) for a multi-label task."""
    return (probs >= THRESHOLD).astype(np.int64) if multi_label else probs.argmax(1)


def disagreement(a: np.ndarray, b: np.ndarray, multi_label: bool) -> float:
    """The fraction of test images (multi-label: of image-label decisions) where two runs decide differently."""
    return float((decisions(a, multi_label) != decisions(b, multi_label)).mean())


def main_predictions(runs: list[Run]) -> dict[tuple, dict[str, np.ndarray]]:
    """(row key, task, seed) -> the predictions of the finished runs that stored validation and test ones."""
    out = {}
    for r in runs:
        p = run_predictions(r)
        if p is not None and {"val_probs", "val_labels", "test_probs", "test_labels"} <= set(p):
            out[(row_key(r), r.spec.task, r.spec.seed)] = p
    return out


def disagreement_matrix(predictions: dict[tuple, dict], keys: list[tuple]) -> dict[tuple, tuple[float, int]]:
    """(key a, key b) -> (mean test disagreement over the (task, seed) pairs both have, number of pairs)."""
    out = {}
    for a in keys:
        for b in keys:
            values = [disagreement(p["test_probs"], predictions[(b, t, s)]["test_probs"], p["test_labels"].ndim == 2)
                      for (k, t, s), p in predictions.items() if k == a and (b, t, s) in predictions]
            if values:
                out[(a, b)] = (float(np.mean(values)), len(values))
    return out


@dataclass
class Ensemble:
    """The validation-chosen ensemble of one (task, seed)."""
    task: str
    seed: int
    candidates: int  # methods with stored predictions
    members: list[tuple]  # row keys, best validation score first
    val_score: float  # the chosen ensemble's validation selection score
    test: dict  # classification_metrics of its mean probabilities on test

    @property
    def k(self) -> int:
        return len(self.members)


def choose_members(val: dict[tuple, tuple[np.ndarray, np.ndarray]], order: list[tuple]) -> tuple[list[tuple], float]:
    """``val``: key -> (validation probabilities, labels), the same labels for all. The top-k keys by validation
    score (ties: ``order``) for the k of :data:`ENSEMBLE_SIZES` or all whose mean probabilities score best on
    validation (ties: the smaller k), and that score. Test predictions are not an argument: they cannot matter."""
    labels = next(iter(val.values()))[1]
    ranked = sorted(val, key=lambda k: (-selection_score(labels, val[k][0]), order.index(k)))
    best, best_score = ranked, -np.inf
    for size in sorted({s for s in ENSEMBLE_SIZES if s < len(ranked)} | {len(ranked)}):
        score = selection_score(labels, np.mean([val[k][0] for k in ranked[:size]], axis=0))
        if score > best_score:
            best, best_score = ranked[:size], score
    return best, float(best_score)


def validation_ensembles(predictions: dict[tuple, dict], keys: list[tuple]) -> list[Ensemble]:
    """One ensemble per (task, seed) with at least two methods whose stored validation and test labels agree
    (the same splits)."""
    out = []
    for task, seed in dict.fromkeys((t, s) for _, t, s in predictions):
        these = {k: predictions[(k, task, seed)] for k in keys if (k, task, seed) in predictions}
        first = next(iter(these.values()))
        these = {k: p for k, p in these.items() if all(
            np.array_equal(p[f"{name}_labels"], first[f"{name}_labels"]) for name in ("val", "test"))}
        if len(these) < 2:
            continue
        members, val_score = choose_members({k: (p["val_probs"], p["val_labels"]) for k, p in these.items()}, keys)
        test_probs = np.mean([these[k]["test_probs"] for k in members], axis=0)
        out.append(Ensemble(task, seed, len(these), members, val_score,
                            classification_metrics(first["test_labels"], test_probs)))
    return out


def ensemble_cell(ensembles: list[Ensemble], task: str, metric: str, n_expected: int, floor: float = math.nan) -> Cell:
    """The ensembles' test ``metric`` on ``task``: mean ± std over their seeds."""
    return pct_cell([e.test[metric] for e in ensembles if e.task == task], n_expected, floor)
