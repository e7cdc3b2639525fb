"""Beyond the accuracy tables (from the main group's stored predictions): how often methods disagree on test
images, and the validation-chosen ensemble (its choices per task and seed; its rows are in the main tables)."""
from __future__ import annotations

import math

import numpy as np

from medvtab.bench.report.load import Bench
from medvtab.bench.report.predictions import (ENSEMBLE_LABEL, ENSEMBLE_SIZES, Ensemble, disagreement_matrix,
                                              main_predictions, validation_ensembles)
from medvtab.bench.report.sections.main import MAIN
from medvtab.bench.report.stats import mean_std
from medvtab.bench.report.tables import MISSING, C, Section, Table, group_section, row_labels, sorted_keys

MAI_2024 = ("Mai et al. (2024, arXiv 2409.16434) found that well-tuned PEFT methods reach similar accuracy with "
            "different predictions, which is what makes ensembling them pay")


def agreement_section(bench: Bench) -> Section:
    runs, section = group_section(bench, MAIN, "Agreement between methods and the validation-chosen ensemble")
    section.key = "agreement"
    if not runs:
        return section
    keys = sorted_keys(runs)
    labels = row_labels(keys)
    predictions = main_predictions(runs)
    if not predictions:
        section.paragraphs.append("No finished run of group 'main' stored its predictions (predictions.npz): "
                                  "nothing to compare.")
        return section
    section.tables.append(disagreement_table(predictions, keys, labels, section))
    section.tables.append(ensemble_table(validation_ensembles(predictions, keys), labels))
    return section


def disagreement_table(predictions: dict, keys: list[tuple], labels: dict, section: Section) -> Table:
    matrix = disagreement_matrix(predictions, keys)
    shown = [k for k in keys if (k, k) in matrix]
    rows = []
    for a in shown:
        row = [C(labels[a])]
        for b in shown:
            d, n = matrix.get((a, b), (math.nan, 0))
            row.append(C(f"{100 * d:.1f}" if n else MISSING, d))
        rows.append(row)
    accuracy = {k: mean_std([float((p["test_probs"].argmax(1) == p["test_labels"]).mean())
                             for (kk, _, _), p in predictions.items() if kk == k and p["test_labels"].ndim == 1])[0]
                for k in shown}
    pairs = [(abs(accuracy[a] - accuracy[b]), a, b) for i, a in enumerate(shown) for b in shown[i + 1:]
             if (a, b) in matrix and math.isfinite(accuracy[a] - accuracy[b])]
    text = ("Disagreement: the percentage of test images on which two methods predict different classes "
            "(multi-label tasks: of image-label decisions at 0.5), averaged over the tasks and seeds both have. "
            "Low disagreement between methods of similar accuracy means they make the same mistakes; high "
            "disagreement means an ensemble can gain.")
    if pairs:
        gap, a, b = min(pairs, key=lambda x: (x[0], -matrix[(x[1], x[2])][0]))
        off = [matrix[(x, y)][0] for i, x in enumerate(shown) for y in shown[i + 1:] if (x, y) in matrix]
        text += (f" The two methods closest in mean test accuracy, {labels[a]} and {labels[b]} ({100 * gap:.1f} "
                 f"points apart), disagree on {100 * matrix[(a, b)][0]:.1f} % of test images; over all pairs "
                 f"disagreement ranges from {100 * min(off):.1f} to {100 * max(off):.1f} %. {MAI_2024}.")
    section.paragraphs.append(text)
    note = ("Each cell: the mean over (task, seed) pairs both methods have of the fraction of test images where "
            "their predicted classes differ; the diagonal (a method against itself) is 0.")
    return Table("disagreement", "Pairwise disagreement on test images (%)", ["Method"] + [labels[k] for k in shown],
                 rows, [note])


def ensemble_table(ensembles: list[Ensemble], labels: dict) -> Table:
    rows = [[C(e.task), C(e.seed), C(e.candidates), C(e.k), C(", ".join(labels[k] for k in e.members)),
             C(f"{100 * e.val_score:.2f}", e.val_score), C(f"{100 * e.test['accuracy']:.2f}", e.test["accuracy"])]
            for e in ensembles]
    sizes = ", ".join(map(str, ENSEMBLE_SIZES))
    notes = [(f"Per task and seed, the methods are ranked by their best validation score (accuracy; mean AUROC for "
              f"multi-label tasks) and k is chosen from {{{sizes}, all}} by the validation score of the mean "
              f"probabilities of the top k (ties: the smaller k); only then is that one ensemble scored on test (the "
              f"'{ENSEMBLE_LABEL}' rows of the main tables). Nothing about the test split enters the choice.")]
    if ensembles:
        ks = [e.k for e in ensembles]
        notes.append(f"Chosen k: {', '.join(f'{k} ({ks.count(k)}×)' for k in sorted(set(ks)))}; mean validation "
                     f"score {100 * float(np.mean([e.val_score for e in ensembles])):.2f}.")
    return Table("ensemble", "Validation-chosen ensembles", ["Task", "Seed", "Candidates", "k", "Members",
                                                              "Validation score", "Test accuracy"], rows, notes)
