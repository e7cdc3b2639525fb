"""Patient out-of-distribution (the DynaMer paper's Tables 8-9): seen against unseen patients, one table per
(task, seen, unseen) setting."""
from __future__ import annotations

import math

from medvtab.bench.report.load import Bench, Run
from medvtab.bench.report.tables import (MISSING, C, Cell, Section, Table, expected_seeds, group_section, mark_best,
                                         ordered, pct_cell, ratio_cell, row_key, row_labels, seed_note, sorted_keys)

OOD = "patient-ood"


def _counts(runs: list[Run], within: str, what: str) -> Cell:
    """The distinct counts of the runs (they differ by seed), e.g. '60' or '58 / 61'."""
    vals = ordered(str(int(v)) for v in (r.metric(what, within) for r in runs) if math.isfinite(v))
    return C(" / ".join(vals) or MISSING)


def ood_section(bench: Bench) -> Section:
    runs, section = group_section(bench, OOD, "Patient out-of-distribution (Tables 8-9)")
    if not runs:
        return section
    section.paragraphs.append(
        "Seen: held-out images of the patients trained on; unseen: every image of patients never seen in "
        "training or validation. Drop = seen - unseen, per seed, in percentage points (positive: worse on new "
        "patients).")
    settings = ordered((r.spec.task, r.spec.seen, r.spec.unseen) for r in runs)
    for task, seen, unseen in settings:
        these = [r for r in runs if (r.spec.task, r.spec.seen, r.spec.unseen) == (task, seen, unseen)]
        keys = sorted_keys(these)
        labels = row_labels(keys)
        n_expected = expected_seeds(these)
        rows = []
        for k in keys:
            rs = [r for r in these if r.finished and row_key(r) == k]
            row = [C(labels[k]), ratio_cell(rs), _counts(rs, "seen", "patients"), _counts(rs, "seen", "images"),
                   _counts(rs, "unseen", "patients"), _counts(rs, "unseen", "images")]
            for metric in ("accuracy", "auroc"):
                s = [r.metric(metric, "seen") for r in rs]
                u = [r.metric(metric, "unseen") for r in rs]
                row += [pct_cell(s, n_expected), pct_cell(u, n_expected),
                        pct_cell([a - b for a, b in zip(s, u)], n_expected)]
            rows.append(row)
        mark_best(rows, [6, 7, 9, 10])
        mark_best(rows, [8, 11], higher=False)
        columns = ["Method", "Total Params", "Seen test patients", "Seen test images", "Unseen patients",
                   "Unseen images", "Seen acc.", "Unseen acc.", "Acc. drop", "Seen AUROC", "Unseen AUROC",
                   "AUROC drop"]
        title = f"{task}: {seen} seen / {unseen} unseen patients"
        section.tables.append(Table(f"ood-{len(section.tables)}", title, columns, rows,
                                    [seed_note(n_expected, "accuracy and AUROC") + " Bold drop: smallest.",
                                     "Patient and image counts per seed (several values: they differ by seed)."]))
    return section
