"""Classification metrics on the test split (scikit-learn implementations).

Multi-class labels are class indices ``(N,)``; multi-label targets are ``(N, L)`` of 1 / 0 / -1 (unknown: left
out of every metric of that label).
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, f1_score,
                             recall_score, roc_auc_score)

THRESHOLD = 0.5  # multi-label decisions


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy, balanced accuracy, macro-F1, macro one-vs-rest AUROC and per-class recall; for multi-label
    targets see :func:`multilabel_metrics`."""
    if labels.ndim == 2:
        return multilabel_metrics(labels, probs)
    num_classes = probs.shape[1]
    preds = probs.argmax(1)
    classes = list(range(num_classes))
    present = np.unique(labels)
    if len(present) < 2:
        auroc = float("nan")  # undefined with one class in the split
    elif num_classes == 2:
        auroc = float(roc_auc_score(labels, probs[:, 1]))
    else:
        # Macro OvR over the classes present in this split (AUROC is undefined for absent ones).
        cols = probs[:, present] / probs[:, present].sum(1, keepdims=True)
        if len(present) == 2:  # sklearn sees two labels as a binary problem; both OvR AUROCs are this one
            auroc = float(roc_auc_score(labels == present[1], cols[:, 1]))
        else:
            auroc = float(roc_auc_score(labels, cols, multi_class="ovr", average="macro", labels=present))
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, average="macro", labels=classes, zero_division=0)),
        "auroc": auroc,
        "per_class_recall": [float(r) for r in recall_score(labels, preds, average=None, labels=classes,
                                                            zero_division=0)],
        "majority_rate": float(np.bincount(labels, minlength=num_classes).max() / len(labels)),
    }


def _per_label(targets: np.ndarray, probs: np.ndarray, score) -> list[float]:
    """``score(y, p)`` per label over its known entries; NaN where the label has one class only."""
    out = []
    for j in range(targets.shape[1]):
        known = targets[:, j] >= 0
        y = targets[known, j]
        out.append(float(score(y, probs[known, j])) if len(np.unique(y)) == 2 else float("nan"))
    return out


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def multilabel_metrics(targets: np.ndarray, probs: np.ndarray) -> dict:
    """Per-label AUROC and average precision (AP), their means over the labels where they are defined (both
    classes among the known entries), and thresholded (0.5) label-wise numbers: ``accuracy`` is the mean
    per-label accuracy over known entries, ``balanced_accuracy`` and ``macro_f1`` the means over labels,
    ``exact_match`` the fraction of images with every known label right. ``majority_rate``: the label-wise
    accuracy of predicting each label's majority value. ``auroc`` is the mean AUROC (the usual CheXpert number)."""
    targets = np.asarray(targets)
    preds = (probs >= THRESHOLD).astype(np.int64)
    known = targets >= 0
    correct = (preds == targets) & known
    per_auroc = _per_label(targets, probs, roc_auc_score)
    per_ap = _per_label(targets, probs, average_precision_score)
    per_bal = _per_label(targets, preds, balanced_accuracy_score)
    per_f1 = []
    for j in range(targets.shape[1]):
        k = known[:, j]
        per_f1.append(float(f1_score(targets[k, j], preds[k, j], zero_division=0)) if k.any() else float("nan"))
    positives = np.where(known, targets, 0).sum(0)
    majority = np.maximum(positives, known.sum(0) - positives).sum() / max(1, known.sum())
    return {
        "accuracy": float(correct.sum() / max(1, known.sum())),
        "balanced_accuracy": _nanmean(per_bal),
        "macro_f1": _nanmean(per_f1),
        "auroc": _nanmean(per_auroc),
        "mean_ap": _nanmean(per_ap),
        "exact_match": float((correct | ~known).all(1).mean()),
        "per_label_auroc": per_auroc,
        "per_label_ap": per_ap,
        "per_label_positives": positives.astype(int).tolist(),
        "majority_rate": float(majority),
    }


def selection_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """What model selection maximises on the validation split: accuracy; for multi-label targets the mean
    AUROC (label-wise accuracy where no label has both classes)."""
    if labels.ndim == 1:
        return float((probs.argmax(1) == labels).mean())
    m = multilabel_metrics(labels, probs)
    return m["auroc"] if not np.isnan(m["auroc"]) else m["accuracy"]
