"""The MedVQA metric definitions, pinned on hand-made answer sets with exact expected values."""
from pathlib import Path

import pytest

from medvtab.vqa.data import VQAItem
from medvtab.vqa.metrics import majority_answers, normalize_answer, score, token_recall_f1


def item(answer: str, answer_type: str, question_type: str = "PRES", qid: str = "0") -> VQAItem:
    return VQAItem(image=Path("/x.jpg"), image_id="x", question="q?", answer=answer, answer_type=answer_type,
                   question_type=question_type, qid=qid)


@pytest.mark.parametrize("raw, expected", [
    ("Yes", "yes"),
    ("  The Liver. ", "liver"),
    ("A CT-scan!", "ct scan"),
    ("an  apple", "apple"),
    ("theatre", "theatre"),  # an article only as a whole word
    ("2.5 cm", "2.5 cm"),
    ("2.5cm x 1.7cm.", "2.5cm x 1.7cm"),  # the sentence's final period goes, the decimal points stay
    ("Small Bowel,Rectum,Colon", "small bowel rectum colon"),  # punctuation becomes a space, not nothing
    ("two", "two"),  # number words are not converted
    ("肝脏，心脏", "肝脏 心脏"),  # Unicode punctuation too
    ("?!", ""),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("pred, gold, hit", [
    ("no", "yes", False),  # a wrong yes/no answer is wrong
    ("yes", "no", False),
    ("Yes.", "yes", True),
    ("no", "not sure", False),  # a prefix of the gold is not a match
    ("yes, no", "yes", False),  # nor is a prediction that contains the gold
    ("liver", "the liver", True),
    ("25", "2.5", False),
    ("2.5", "2.5", True),
    ("2", "two", False),
])
def test_exact_match(pred, gold, hit):
    assert score([pred], [item(gold, "closed")])["closed_accuracy"] == float(hit)


def test_score_on_a_hand_made_set():
    items = [item("yes", "closed", "PRES"), item("no", "closed", "PRES"), item("yes", "closed", "ABN"),
             item("left", "closed", "POS"),
             item("right lung", "open", "POS"), item("CT", "open", "MODALITY"), item("pleural effusion", "open", "ABN")]
    preds = ["no", "No", "yes, definitely", "Left.", "lung", "ct", "none"]
    result = score(preds, items)
    assert result["n_closed"] == 4 and result["n_open"] == 3 and result["n"] == 7  # counts not swapped
    assert result["closed_accuracy"] == pytest.approx(2 / 4)
    assert result["open_accuracy"] == pytest.approx(1 / 3)
    assert result["overall_accuracy"] == pytest.approx(3 / 7)  # item mean, not (1/2 + 1/3) / 2
    # token recall: "lung" vs "right lung" 1/2, "ct" vs "ct" 1, "none" vs "pleural effusion" 0
    assert result["open_token_recall"] == pytest.approx((0.5 + 1 + 0) / 3)
    # token F1: precision 1 and recall 1/2 give 2/3; then 1; then 0
    assert result["open_token_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert result["per_question_type"] == {
        "ABN": {"accuracy": 0.0, "n": 2}, "MODALITY": {"accuracy": 1.0, "n": 1},
        "POS": {"accuracy": 0.5, "n": 2}, "PRES": {"accuracy": 0.5, "n": 2}}


@pytest.mark.parametrize("pred, gold, recall, f1", [
    ("left kidney", "left left kidney", 2 / 3, 0.8),  # multiset: 'left' counts twice in the gold
    ("left left left", "left kidney", 1 / 2, 0.4),  # ... and only once in the overlap
    ("the left kidney.", "Left Kidney", 1.0, 1.0),  # normalised tokens
    ("kidney", "liver", 0.0, 0.0),
    ("", "liver", 0.0, 0.0),
    ("", "?", 1.0, 1.0),  # both normalise to nothing
    ("肝", "肝脏", 1 / 2, 2 / 3),  # each CJK character is a token
])
def test_token_recall_f1(pred, gold, recall, f1):
    assert token_recall_f1(pred, gold) == pytest.approx((recall, f1))


def test_empty_groups_are_none():
    closed_only = score(["yes"], [item("yes", "closed")])
    assert closed_only["closed_accuracy"] == 1.0 and closed_only["overall_accuracy"] == 1.0
    assert closed_only["open_accuracy"] is None
    assert closed_only["open_token_recall"] is None and closed_only["open_token_f1"] is None
    nothing = score([], [])
    assert nothing["n"] == 0 and nothing["per_question_type"] == {}
    assert all(nothing[k] is None for k in ("closed_accuracy", "open_accuracy", "overall_accuracy",
                                            "open_token_recall", "open_token_f1"))


def test_score_rejects_misaligned_input():
    with pytest.raises(ValueError, match="2 predictions for 1 items"):
        score(["yes", "no"], [item("yes", "closed")])
    with pytest.raises(ValueError, match="answer_type"):
        score(["yes"], [item("yes", "CLOSED")])


def test_majority_answers_per_answer_type():
    train = [item("Yes", "closed"), item("yes", "closed"), item("no", "closed"), item("No.", "closed"),
             item("CT", "open"), item("ct.", "open"), item("MRI", "open")]
    test = [item("yes", "open"), item("no", "closed"), item("ct", "open")]
    # closed: yes 2, no 2 -> the tie goes to "no"; open: "ct" twice after normalisation
    assert majority_answers(train, test) == ["ct", "no", "ct"]
    assert majority_answers(train[4:], [item("yes", "closed")]) == [""]  # no closed train answer: empty
    assert score(majority_answers(train, test), test)["overall_accuracy"] == pytest.approx(2 / 3)
