"""Predictions-based parts of the report, on the real tiny store (``bench_store``): every finished run's
predictions.npz, the pairwise disagreement table, the validation-chosen ensemble (its choice blind to the test
labels, its test score from its members' stored probabilities), and the notes on cells at the majority-class floor
(a store copy whose runs are rewritten, consistently, as a model answering the majority class)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medvtab.bench.report.floor import majority_share
from medvtab.bench.report.load import load_bench
from medvtab.bench.report.predictions import (choose_members, disagreement, main_predictions, run_predictions,
                                              validation_ensembles)
from medvtab.bench.report.tables import sorted_keys
from medvtab.bench.report.write import write_report
from medvtab.engine import rundir
from medvtab.engine.metrics import classification_metrics, selection_score


def main_runs(root: Path):
    return [r for r in load_bench(root).group("main") if r.finished]


def ensembles_of(root: Path):
    runs = main_runs(root)
    return validation_ensembles(main_predictions(runs), sorted_keys(runs))


def test_every_finished_run_stores_its_predictions(bench_store):
    for run in load_bench(bench_store).finished:
        p = rundir.read_predictions(run.dir / rundir.PREDICTIONS)
        assert {"val_probs", "val_labels", "test_probs", "test_labels"} <= set(p)
        assert p["test_probs"].shape == (run.metrics["split_sizes"]["test"], run.config["num_classes"])
        assert classification_metrics(p["test_labels"], p["test_probs"])["accuracy"] == run.metrics["accuracy"]
        if run.spec.protocol == "patient-ood":
            assert p["unseen_probs"].shape[0] == run.metrics["unseen"]["images"]


def test_disagreement_table_is_symmetric_with_a_zero_diagonal(bench_store, bench_report):
    table = bench_report.table("disagreement")
    names = table.columns[1:]
    assert names == ["linear", "partial", "dynamer"]  # lora never finished
    for i, a in enumerate(names):
        assert table.row(a)[1 + i].text == "0.0"
        for j, b in enumerate(names):
            assert table.row(a)[1 + j].text == table.row(b)[1 + i].text
    runs = {(r.spec.method, r.spec.task, r.spec.seed): run_predictions(r) for r in main_runs(bench_store)}
    pairs = [(t, s) for (m, t, s) in runs if m == "linear"]
    expected = np.mean([disagreement(runs[("linear", t, s)]["test_probs"], runs[("dynamer", t, s)]["test_probs"],
                                     False) for t, s in pairs])
    assert table.row("linear")[3].value == pytest.approx(expected)
    assert "Mai et al." in " ".join(s for sec in bench_report.sections for s in sec.paragraphs)


def test_ensemble_is_scored_on_test_from_its_members(bench_store, bench_report):
    ensembles = ensembles_of(bench_store)
    assert sorted((e.task, e.seed) for e in ensembles) == [("breastmnist", 0), ("breastmnist", 1),
                                                           ("retinamnist", 0)]
    runs = {(r.spec.method, r.spec.task, r.spec.seed): run_predictions(r) for r in main_runs(bench_store)}
    for e in ensembles:
        assert e.candidates == 3 and e.k in (2, 3)
        members = [runs[(k[0], e.task, e.seed)] for k in e.members]
        val = [selection_score(m["val_labels"], m["val_probs"]) for m in members]
        assert val == sorted(val, reverse=True)  # best validation score first
        mean = np.mean([m["test_probs"] for m in members], axis=0)
        assert e.test["accuracy"] == classification_metrics(members[0]["test_labels"], mean)["accuracy"]
        assert e.val_score == selection_score(members[0]["val_labels"],
                                              np.mean([m["val_probs"] for m in members], axis=0))
    cell = bench_report.table("main-other").row("ensemble (top-k by validation)")[2]
    assert cell.value == pytest.approx(np.mean([e.test["accuracy"] for e in ensembles if e.task == "breastmnist"]))
    assert len(bench_report.table("ensemble").rows) == 3
    assert bench_report.table("main-balanced-auroc").row("ensemble (top-k by validation)")


def test_ensemble_choice_ignores_the_test_labels(bench_store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(bench_store, root)
    before = ensembles_of(root)
    rng = np.random.default_rng(0)
    orders = {}
    for run in main_runs(root):
        path = run.dir / rundir.PREDICTIONS
        p = rundir.read_predictions(path)
        order = orders.setdefault((run.spec.task, run.spec.seed), rng.permutation(len(p["test_labels"])))
        sets = {name: (p[f"{name}_probs"], p[f"{name}_labels"]) for name in ("val", "test")}
        sets["test"] = (p["test_probs"], p["test_labels"][order])
        rundir.write_predictions(path, sets)
    after = ensembles_of(root)
    assert [(e.task, e.seed, e.members, e.val_score) for e in after] == \
        [(e.task, e.seed, e.members, e.val_score) for e in before]
    assert any(a.test["accuracy"] != b.test["accuracy"] for a, b in zip(after, before))  # the labels did move


def test_choose_members_by_validation_only():
    labels = np.array([0, 1, 1, 0])
    g = np.array([[0.9, 0.1], [0.1, 0.9], [0.1, 0.9], [0.45, 0.55]])  # 3 / 4, unsure where wrong
    h = np.array([[0.9, 0.1], [0.1, 0.9], [0.55, 0.45], [0.9, 0.1]])  # 3 / 4, wrong on another image
    b = 1 - g  # 1 / 4
    members, score = choose_members({"b": (b, labels), "g": (g, labels), "h": (h, labels)}, ["b", "g", "h"])
    assert members == ["g", "h"] and score == 1.0  # g + h: 4 / 4; all three: 3 / 4
    assert disagreement(g, g, False) == 0.0 and disagreement(g, h, False) == disagreement(h, g, False) == 0.5


def test_multi_label_decisions_at_the_threshold():
    a = np.array([[0.9, 0.2], [0.4, 0.6]])
    b = np.array([[0.8, 0.7], [0.1, 0.3]])
    assert disagreement(a, b, True) == 0.5 == disagreement(b, a, True)  # 2 of 4 image-label decisions differ
    targets = np.array([[1, 0], [1, -1], [0, 0]])  # majority: label 0 -> 1, label 1 -> 0 (unknown left out)
    always = np.array([[0.9, 0.1]] * 3)
    assert majority_share(always, targets) == 1.0
    assert majority_share(1 - always, targets) == 0.0


def make_majority_run(run_dir: Path) -> None:
    """Rewrite a finished run as a model that always answers the majority class: predictions, metrics, log."""
    p = rundir.read_predictions(run_dir / rundir.PREDICTIONS)
    sets = {}
    for name in ("val", "test"):
        labels = p[f"{name}_labels"]
        probs = np.full(p[f"{name}_probs"].shape, 0.1 / (p[f"{name}_probs"].shape[1] - 1), dtype=np.float32)
        probs[:, np.bincount(labels).argmax()] = 0.9
        sets[name] = (probs, labels)
    rundir.write_predictions(run_dir / rundir.PREDICTIONS, sets)
    metrics = json.loads((run_dir / rundir.METRICS).read_text())
    metrics.update(classification_metrics(sets["test"][1], sets["test"][0]))
    (run_dir / rundir.METRICS).write_text(json.dumps(metrics))
    with open(run_dir / rundir.LOG, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["val_accuracy"] = selection_score(sets["val"][1], sets["val"][0])
    rundir.write_csv(run_dir / rundir.LOG, rows)


def test_floor_cells_are_explained(bench_store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(bench_store, root)
    linear = [r for r in main_runs(root) if r.spec.method == "linear" and r.spec.task == "breastmnist"]
    for run in linear:
        make_majority_run(run.dir)
    report = write_report(root, attention=False)
    table = report.table("main-other")
    floor = table.row("majority class (floor)")[2].text
    assert table.row("linear")[2].mark == "†" and table.row("linear")[2].text == f"{floor} ± 0.00"
    val = rundir.read_predictions(linear[0].dir / rundir.PREDICTIONS)["val_labels"]
    val_floor = f"{100 * np.bincount(val).max() / len(val):.2f}"
    note = next(n for n in table.notes if n.startswith("breastmnist / linear:"))
    assert note.startswith(f"breastmnist / linear: {floor} % = the floor {floor} %: seed 0 (test accuracy {floor} %)")
    assert note.count("it answered the majority class for 100 % of test images") == 2
    assert f"its best validation accuracy ({val_floor} %) never exceeded the validation floor ({val_floor} %) in its " \
           f"only epoch" in note
    assert "breastmnist / linear:" in report.md_path.read_text()
