"""Why a main-table cell does not beat the majority-class floor, in words derived from the runs: how often each
seed's run answered the test split's majority class, and whether its validation score ever rose above the
validation split's floor in any epoch (log.csv)."""
from __future__ import annotations

import csv
import math

import numpy as np

from medvtab.bench.report.load import Run, number
from medvtab.bench.report.predictions import decisions, run_predictions
from medvtab.bench.report.stats import mean_std
from medvtab.bench.report.tables import by_row_task, floors
from medvtab.engine import rundir

TOLERANCE = 1e-12  # as the floor mark


def majority_share(probs: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of decisions equal to the split's majority answer: the most frequent class, or (multi-label)
    each label's most frequent known value."""
    if labels.ndim == 1:
        return float((probs.argmax(1) == np.bincount(labels).argmax()).mean())
    known = labels >= 0
    majority = (np.where(known, labels, 0).sum(0) * 2 > known.sum(0)).astype(np.int64)
    return float(((decisions(probs, True) == majority) & known).sum() / max(1, known.sum()))


def validation_floor(labels: np.ndarray) -> tuple[float, str]:
    """(the floor of the validation selection score, its name): the majority-class rate for accuracy, 0.5 for a
    multi-label task's mean AUROC."""
    if labels.ndim == 2:
        return 0.5, "chance AUROC"
    return float(np.bincount(labels).max() / len(labels)), "validation floor"


def validation_scores(run: Run) -> list[float]:
    """The per-epoch validation selection scores of log.csv (empty where it cannot be read)."""
    try:
        with open(run.dir / rundir.LOG, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    column = "val_auroc" if rows and "val_auroc" in rows[0] else "val_accuracy"
    return [number(row.get(column)) for row in rows]


def seed_explanation(run: Run) -> str:
    """What one run did, from its predictions and log."""
    parts = []
    p = run_predictions(run)
    if p is not None and "test_probs" in p:
        parts.append(f"it answered the majority class for {100 * majority_share(p['test_probs'], p['test_labels']):.0f}"
                     f" % of test images")
    scores = [s for s in validation_scores(run) if math.isfinite(s)]
    if scores and p is not None and "val_labels" in p:
        floor, name = validation_floor(p["val_labels"])
        best = max(scores)
        what = "mean AUROC" if p["val_labels"].ndim == 2 else "accuracy"
        epochs = "its only epoch" if len(scores) == 1 else f"any of its {len(scores)} epochs"
        where = (f"never exceeded the {name} ({100 * floor:.2f} %) in {epochs}"
                 if best <= floor + TOLERANCE else
                 f"exceeded the {name} ({100 * floor:.2f} %) at epoch {scores.index(best) + 1} of {len(scores)}")
        parts.append(f"its best validation {what} ({100 * best:.2f} %) {where}")
    head = f"seed {run.spec.seed} (test accuracy {100 * run.metric('accuracy'):.2f} %)"
    return f"{head}: " + ("; ".join(parts) if parts else "no stored predictions or log to explain it")


def tuning_explanation(tuning: dict | None, task: str, method: str) -> str | None:
    """The validation scores of the (task, method)'s tuning trials (DIR/tuning.json), e.g. "its learning-rate
    trials on validation: lr=0.0001 74.24 %, lr=0.0003 74.24 % (pruned), ..."."""
    study = next((s for s in (tuning or {}).get("studies", []) if s.get("task") == task and s.get("method") == method),
                 None)
    if study is None or not study.get("trials"):
        return None
    shown = []
    for trial in study["trials"]:
        values = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial["values"].items())
        score = trial.get("val_score")
        state = {"PRUNED": " (pruned)", "FAIL": " (failed)"}.get(trial.get("state"), "")
        shown.append(f"{values} {100 * score:.2f} %{state}" if isinstance(score, (int, float)) else f"{values}{state}")
    return "its tuning trials' best validation scores: " + ", ".join(shown)


def floor_notes(runs: list[Run], tasks: list[str], keys: list[tuple], labels: dict,
                tuning: dict | None = None) -> list[str]:
    """One note per (task, row) whose mean test accuracy is not above the task's majority-class rate; with the
    grid's tuning record, the (task, method)'s trials too."""
    cells = by_row_task(runs)
    floor = floors([r for r in runs if r.finished])
    notes = []
    for task in tasks:
        for k in keys:
            rs = cells.get(k, {}).get(task, [])
            acc = mean_std([r.metric("accuracy") for r in rs])[0]
            f = floor.get(task, math.nan)
            if not rs or not math.isfinite(acc) or not math.isfinite(f) or acc > f + TOLERANCE:
                continue
            relation = "=" if abs(acc - f) <= 5e-5 else "below"
            parts = [seed_explanation(r) for r in sorted(rs, key=lambda r: r.spec.seed)]
            trials = tuning_explanation(tuning, task, rs[0].spec.method)
            notes.append(f"{task} / {labels[k]}: {100 * acc:.2f} % {relation} the floor {100 * f:.2f} %: "
                         + "; ".join(parts + ([trials] if trials else [])) + ".")
    return notes
