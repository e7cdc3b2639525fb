"""MedVQA metrics, defined once here and pinned by ``tests/vqa/test_metrics.py``.

Normalisation (:func:`normalize_answer`), applied to prediction and gold alike:

1. lowercase and strip;
2. punctuation (ASCII and Unicode) becomes a space, except a decimal point between two digits ("2.5" stays
   "2.5"); a space rather than deletion keeps lists apart ("bowel,colon" -> "bowel colon");
3. the articles "a", "an", "the" are removed as whole words;
4. runs of whitespace collapse to one space.

Number words are not converted ("two" does not equal "2").

Scores, over items whose ``answer_type`` is "closed" or "open":

- *exact match*: ``normalize_answer(pred) == normalize_answer(gold)``. Nothing looser: a prediction that merely
  contains the gold answer ("no" vs gold "not sure", "yes, no" vs gold "yes") is wrong, and so is a wrong yes/no
  answer. Some public MedVQA scripts count containment as a hit, which scores any yes/no answer right on some
  questions; others swap the closed and open counts. Neither happens here.
- *closed accuracy*: mean exact match over closed items; *open accuracy*: the same over open items;
  *overall accuracy*: mean exact match over all items (an item mean, not the mean of the two accuracies).
- *open token recall*: ``|gold ∩ pred| / |gold|`` over normalised tokens counted as multisets; *open token F1*:
  the harmonic mean of that recall and the precision ``|gold ∩ pred| / |pred|`` (0 when they share no token);
  both averaged over open items. Tokens are the words of the normalised answer, and every CJK character is a
  token of its own (Chinese answers carry no spaces). An empty token list matches only another empty one
  (score 1) and scores 0 against a non-empty one.
- *per question type*: exact-match accuracy and item count for each question type present.

The accuracy (or token score) of an empty group is None: not 0, which would read as a result, nor NaN.
"""
from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medvtab.vqa.data import VQAItem

ANSWER_TYPES = ("closed", "open")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_DECIMAL_POINT = re.compile(r"(?<=\d)\.(?=\d)")
_KEEP = "\0"  # stands in for a decimal point while punctuation is replaced
_CJK = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])")


def _is_punctuation(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str) -> str:
    """Lowercase, punctuation to spaces (decimal points kept), articles dropped, whitespace collapsed."""
    text = _DECIMAL_POINT.sub(_KEEP, text.lower().strip())
    text = "".join(" " if _is_punctuation(ch) else ch for ch in text).replace(_KEEP, ".")
    return " ".join(_ARTICLES.sub(" ", text).split())


def _tokens(text: str) -> list[str]:
    """Words of the normalised answer, each CJK character a word of its own."""
    return _CJK.sub(r" \1 ", normalize_answer(text)).split()


def token_recall_f1(prediction: str, gold: str) -> tuple[float, float]:
    """(recall, F1) of the prediction's tokens against the gold tokens, counted as multisets."""
    pred, ref = _tokens(prediction), _tokens(gold)
    if not pred or not ref:
        same = float(pred == ref)
        return same, same
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0, 0.0
    recall, precision = common / len(ref), common / len(pred)
    return recall, 2 * precision * recall / (precision + recall)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score(predictions: list[str], items: list[VQAItem]) -> dict:
    """Closed, open and overall accuracy, open token recall/F1 and per-question-type accuracy.

    Raises ValueError when the predictions do not pair one-to-one with the items or an item's answer type is
    neither "closed" nor "open" (a silent mismatch would shift every score).
    """
    if len(predictions) != len(items):
        raise ValueError(f"{len(predictions)} predictions for {len(items)} items")
    hits: dict[str, list[float]] = {t: [] for t in ANSWER_TYPES}
    by_type: dict[str, list[float]] = {}
    recalls, f1s = [], []
    for pred, item in zip(predictions, items):
        if item.answer_type not in ANSWER_TYPES:
            raise ValueError(f"item {item.qid}: answer_type {item.answer_type!r}, expected 'closed' or 'open'")
        hit = float(normalize_answer(pred) == normalize_answer(item.answer))
        hits[item.answer_type].append(hit)
        by_type.setdefault(item.question_type, []).append(hit)
        if item.answer_type == "open":
            recall, f1 = token_recall_f1(pred, item.answer)
            recalls.append(recall)
            f1s.append(f1)
    return {
        "closed_accuracy": _mean(hits["closed"]),
        "open_accuracy": _mean(hits["open"]),
        "overall_accuracy": _mean(hits["closed"] + hits["open"]),
        "open_token_recall": _mean(recalls),
        "open_token_f1": _mean(f1s),
        "n_closed": len(hits["closed"]),
        "n_open": len(hits["open"]),
        "n": len(items),
        "per_question_type": {q: {"accuracy": _mean(h), "n": len(h)} for q, h in sorted(by_type.items())},
    }


def _majority(answers: list[str]) -> str:
    """The most frequent answer; ties go to the alphabetically first, so the baseline is deterministic."""
    counts = Counter(answers)
    return min(counts, key=lambda a: (-counts[a], a))


def majority_answers(train: list[VQAItem], test: list[VQAItem]) -> list[str]:
    """The reference baseline: every test item gets the most frequent normalised train answer of its answer
    type (an empty answer, always wrong unless the gold is empty too, where train has none of that type)."""
    per_type = {t: [normalize_answer(i.answer) for i in train if i.answer_type == t] for t in ANSWER_TYPES}
    best = {t: _majority(a) if a else "" for t, a in per_type.items()}
    return [best.get(item.answer_type, "") for item in test]
