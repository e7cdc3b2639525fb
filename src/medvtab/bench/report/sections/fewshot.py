"""Data efficiency (the paper's Figure 1c): accuracy by training fraction or shots per class, table and curves."""
from __future__ import annotations

from pathlib import Path

from medvtab.bench.report import figures
from medvtab.bench.report.load import Bench
from medvtab.bench.report.stats import mean_std
from medvtab.bench.report.tables import (C, FigureRef, Section, Table, floors, group_section, mark_best, ordered,
                                         pct_cell, row_key, row_labels, seed_note, sorted_keys)
from medvtab.bench.store import RunSpec

FEWSHOT = "fewshot"


def amount(spec: RunSpec) -> tuple[str, float]:
    """How much training data a run had: ("fraction", f), ("shots", k) or ("full", 1.0)."""
    if spec.train_fraction is not None:
        return "fraction", spec.train_fraction
    if spec.shots is not None:
        return "shots", float(spec.shots)
    return "full", 1.0


def fewshot_section(bench: Bench, figures_dir: Path) -> Section:
    runs, section = group_section(bench, FEWSHOT, "Data efficiency (Figure 1c)")
    if not runs:
        return section
    kinds = ordered(amount(r.spec)[0] for r in runs)
    xlabel = {"fraction": "fraction of the training set", "shots": "training images per class"}.get(
        kinds[0] if len(kinds) == 1 else "", "training fraction or shots per class")
    keys = sorted_keys(runs)
    labels = row_labels(keys)
    tasks = ordered(r.spec.task for r in runs)
    amounts = sorted(ordered(amount(r.spec) for r in runs), key=lambda a: (a[0], a[1]))
    n_expected = max((len({r.spec.seed for r in runs if row_key(r) == k and r.spec.task == t
                           and amount(r.spec) == a}) for k in keys for t in tasks for a in amounts), default=0)
    rows = []
    curves: dict[str, dict[str, list]] = {}
    for k in keys:
        row = [C(labels[k])]
        for t in tasks:
            for a in amounts:
                vals = [r.metric("accuracy") for r in runs if r.finished and row_key(r) == k
                        and r.spec.task == t and amount(r.spec) == a]
                cell = pct_cell(vals, n_expected)
                row.append(cell)
                mean, std, n = mean_std(vals)
                if n:
                    curves.setdefault(t, {}).setdefault(labels[k], []).append((a[1], mean, std))
        rows.append(row)
    cols = [f"{t} @ " + {"fraction": f"{a[1]:g}", "shots": f"{a[1]:g} shots"}.get(a[0], "all")
            for t in tasks for a in amounts]
    mark_best(rows, list(range(1, 1 + len(cols))))
    section.tables.append(Table("fewshot", "Accuracy by amount of training data", ["Method"] + cols, rows,
                                [seed_note(n_expected) + " Column: task and training fraction (or shots per "
                                                         "class); validation and test sets are the full ones."]))
    if curves:
        floor = floors([r for r in runs if r.finished])
        path = figures.data_efficiency(curves, floor, xlabel, figures_dir / "data_efficiency.png")
        section.figures.append(FigureRef(
            "data_efficiency", path, "Test accuracy against the amount of training data (the paper's Figure 1c), "
                                     "mean ± standard deviation over seeds; dashed: majority-class rate."))
    return section
