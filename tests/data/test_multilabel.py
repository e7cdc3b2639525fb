"""Multi-label tasks end to end: CheXpert- and NIH-style CSV replicas built from real Kermany chest X-rays (labels
Pneumonia / Bacterial / Viral from the source's own diagnosis and subtype), the uncertain-label policies, npz
(N, L) labels, the data check, masked BCE, the metrics on hand-made cases, and training through `medvtab train`."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medvtab.cli import app
from medvtab.data.check import check_task
from medvtab.data.convert import prepare
from medvtab.data.loading import bundled_path, load_task
from medvtab.engine.evaluate import task_loss
from medvtab.engine.metrics import multilabel_metrics, selection_score
from medvtab.errors import MedvtabError

LABELS = ["Pneumonia", "Bacterial", "Viral"]


@pytest.fixture(scope="module")
def kermany():
    """(images (N, 28, 28), targets (N, 3), patient ids): 90 real images of 45 patients, 2 each, from the
    bundled Kermany copy; 30 patients per subtype (normal, bacteria, virus)."""
    with np.load(bundled_path("kermany-cxr")) as npz:
        images, subtype, pids = npz["images"], npz["subtype"].astype(str), npz["patient_ids"].astype(str)
    take = []
    for kind in ("normal", "bacteria", "virus"):
        seen = {}
        for i in np.flatnonzero(subtype == kind):
            seen.setdefault(pids[i], []).append(i)
        take += [i for ids in [v[:2] for v in seen.values() if len(v) >= 2][:15] for i in ids]
    take = np.array(take)
    sub = subtype[take]
    targets = np.stack([sub != "normal", sub == "bacteria", sub == "virus"], 1).astype(np.int8)
    return images[take], targets, pids[take]


def chexpert_replica(root, images, targets, pids, uncertain_rows=(), blank_rows=()):
    """CheXpert's layout: Path = train/patientNNNNN/studyN/view1_frontal.png, extra columns Sex/Age, marks
    1 / 0 / -1 / blank. ``uncertain_rows`` get -1 for Viral; ``blank_rows`` get a blank Viral (= not mentioned)."""
    numbers = {p: n for n, p in enumerate(sorted(set(pids)), start=1)}
    rows = []
    for i, (im, t, pid) in enumerate(zip(images, targets, pids)):
        rel = f"train/patient{numbers[pid]:05d}/study{i % 2 + 1}/view1_frontal.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(root / rel)
        marks = [str(int(v)) for v in t]
        if i in uncertain_rows:
            marks[2] = "-1.0"
        if i in blank_rows:
            marks[2] = ""
        rows.append([rel, "F", "40", *marks])
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Path", "Sex", "Age", *LABELS])
        w.writerows(rows)


def manifest_labels(out):
    with open(out / "manifest.csv", newline="") as f:
        return [r["label"] for r in csv.DictReader(f)]


@pytest.mark.parametrize("policy, mark", [("ignore", "-1"), ("zeros", "0"), ("ones", "1")])
def test_chexpert_csv_uncertain_policies(tmp_path, kermany, policy, mark):
    images, targets, pids = kermany
    raw = tmp_path / "raw"
    uncertain, blank = (0, 50), (1, 51)
    chexpert_replica(raw, images, targets, pids, uncertain_rows=uncertain, blank_rows=blank)
    out = tmp_path / "prep"
    meta = prepare("my-chexpert", raw, out, layout="csv", image_size=28, label_column=",".join(LABELS),
                   uncertain=policy)
    assert meta["task_type"] == "multi-label" and meta["class_names"] == LABELS
    assert meta["policy"]["uncertain"] == policy
    assert meta["patients"] == 45  # taken from the patientNNNNN path component
    labels = manifest_labels(out)
    for i in range(len(targets)):
        want = [str(int(v)) for v in targets[i]]
        if i in uncertain:
            want[2] = mark
        if i in blank:
            want[2] = "0"  # blank = not mentioned = negative
        assert labels[i] == ";".join(want), i
    data = load_task(str(out))
    assert data.multi_label and data.num_classes == 3 and data.train.targets.shape[1] == 3
    # patient-disjoint pooled split (every row has a patient id)
    train_p, test_p = set(data.train.patient_ids), set(data.test.patient_ids)
    assert not train_p & test_p


def test_chexpert_columns_need_naming_and_bad_marks_are_named(tmp_path, kermany):
    images, targets, pids = kermany
    raw = tmp_path / "raw"
    chexpert_replica(raw, images[:10], targets[:10], pids[:10])
    with pytest.raises(MedvtabError, match="cannot tell the label column"):  # Sex / Age are not marks
        prepare("c", raw, tmp_path / "a", layout="csv", image_size=28)
    with pytest.raises(MedvtabError, match="multi-label column 'Sex' holds 'F'"):
        prepare("c", raw, tmp_path / "b", layout="csv", image_size=28, label_column="Pneumonia,Sex")
    with pytest.raises(MedvtabError, match="--uncertain.*'maybe' is not one of ignore, zeros, ones"):
        prepare("c", raw, tmp_path / "c", layout="csv", image_size=28, label_column="Pneumonia,Viral",
                uncertain="maybe")
    assert not any(p.name in ("a", "b", "c") for p in tmp_path.iterdir())


def test_nih_joined_labels_and_auto_detected_columns(tmp_path, kermany):
    images, targets, _ = kermany
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = []
    for i in range(12):
        Image.fromarray(images[i * 7]).save(raw / f"{i}.png")
        names = [n for n, v in zip(LABELS, targets[i * 7]) if v]
        rows.append([f"{i}.png", "|".join(names) or "No Finding"])
    with open(raw / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["Image Index", "Finding Labels"], *rows])
    meta = prepare("nih", raw, tmp_path / "nih", layout="csv", image_size=28, image_column="Image Index",
                   label_column="Finding Labels")
    assert meta["task_type"] == "multi-label"
    assert meta["class_names"] == sorted({n for r in rows for n in r[1].split("|")})
    got = manifest_labels(tmp_path / "nih")
    for r, label in zip(rows, got):
        assert label == ";".join(str(int(n in r[1].split("|"))) for n in meta["class_names"])
    # several 0/1 columns where some row has two 1s: multi-label without being told
    with open(raw / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", *LABELS], *[[f"{i}.png", *map(int, targets[i * 7])] for i in range(12)]])
    meta = prepare("auto", raw, tmp_path / "auto", layout="csv", image_size=28)
    assert meta["task_type"] == "multi-label" and meta["class_names"] == LABELS


def test_npz_multilabel_targets_and_bad_values(tmp_path, kermany):
    images, targets, _ = kermany
    t = targets.astype(np.int64).copy()
    t[3, 2] = -1
    path = tmp_path / "ml.npz"
    np.savez(path, images=images, labels=t)
    data = load_task(str(path))
    assert data.multi_label and data.task_type == "multi-label" and data.num_classes == 3
    merged = np.concatenate([data.train.targets, data.val.targets, data.test.targets])
    assert sorted(map(tuple, merged.tolist())) == sorted(map(tuple, t.tolist()))
    bad = t.copy()
    bad[0, 0] = 2
    np.savez(tmp_path / "bad.npz", images=images, labels=bad)
    with pytest.raises(MedvtabError, match="multi-label and must hold 1 .*found \\[2\\]"):
        load_task(str(tmp_path / "bad.npz"))


def test_data_check_finds_a_label_without_positives(tmp_path, kermany):
    images, targets, _ = kermany
    t = targets.copy()
    t[:, 2] = 0  # no image is Viral
    np.savez(tmp_path / "noviral.npz", images=images, labels=t)
    report = check_task(load_task(str(tmp_path / "noviral.npz")))
    assert not report.ok
    assert any(f.check == "empty classes" and "1 class of 3" in f.message for f in report.findings)
    np.savez(tmp_path / "ok.npz", images=images, labels=targets)
    assert check_task(load_task(str(tmp_path / "ok.npz"))).ok


def test_masked_bce_ignores_unknown_entries():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    y = torch.tensor([[1, -1], [0, 1]])
    other = logits.clone()
    other[0, 1] = 50.0  # the unknown entry's logit must not matter
    assert torch.equal(task_loss(logits, y), task_loss(other, y))
    want = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, 0.5, 3.0]), torch.tensor([1.0, 0.0, 1.0]))
    assert torch.allclose(task_loss(logits, y), want)


def test_multilabel_metrics_on_hand_made_cases():
    targets = np.array([[1, 0], [0, 1], [1, -1], [0, 0]])
    probs = np.array([[0.9, 0.2], [0.3, 0.8], [0.6, 0.99], [0.4, 0.85]])
    m = multilabel_metrics(targets, probs)
    assert m["per_label_auroc"] == [1.0, 0.5]  # label 1: positive 0.8 vs negatives 0.2, 0.85: 1 of 2 pairs
    assert m["auroc"] == 0.75
    assert m["per_label_ap"][0] == 1.0
    assert m["accuracy"] == 6 / 7  # 7 known entries; (3, 1) predicted 1 for 0
    assert m["exact_match"] == 0.75
    assert m["per_label_positives"] == [2, 1]
    assert m["majority_rate"] == (2 + 2) / 7
    assert selection_score(targets, probs) == 0.75
    one_class = multilabel_metrics(np.array([[1, 0], [1, 1]]), np.array([[0.9, 0.1], [0.8, 0.9]]))
    assert np.isnan(one_class["per_label_auroc"][0]) and one_class["auroc"] == 1.0


def test_multilabel_csv_trains_through_medvtab_train(tmp_path, kermany):
    images, targets, pids = kermany
    raw = tmp_path / "raw"
    chexpert_replica(raw, images, targets, pids, uncertain_rows=(0, 50))
    runner = CliRunner()
    got = runner.invoke(app, ["data", "prepare", "my-chexpert", "--src", str(raw), "--out", str(tmp_path / "prep"),
                              "--layout", "csv", "--image-size", "28", "--label-column", ",".join(LABELS)])
    assert got.exit_code == 0, got.output
    assert "3 labels (multi-label)" in got.output
    out = tmp_path / "run"
    got = runner.invoke(app, ["train", "--task", str(tmp_path / "prep"), "--method", "linear", "--epochs", "2",
                              "--out", str(out)])
    assert got.exit_code == 0, got.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task_type"] == "multi-label"
    assert len(metrics["per_label_auroc"]) == 3 and len(metrics["per_label_ap"]) == 3
    assert 0 <= metrics["mean_ap"] <= 1 and 0 <= metrics["exact_match"] <= 1
    assert "val_auroc" in (out / "log.csv").read_text().splitlines()[0]
    png = tmp_path / "x.png"
    Image.fromarray(images[0]).save(png)
    got = runner.invoke(app, ["predict", "--run", str(out), str(png)])
    assert got.exit_code == 0, got.output
    line = json.loads(got.output.strip().splitlines()[-1])
    assert set(line["probabilities"]) == set(LABELS) and isinstance(line["prediction"], list)
