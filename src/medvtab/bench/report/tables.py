"""The report as plain data, rendered twice (markdown and HTML): sections of paragraphs, tables of cells and
figures; the cell formats; and the grouping of runs into table rows (one row per method configuration, any task
and seed) with the accuracy table that most sections build on.

Text anywhere in the model is plain; a `code` span (between backquotes) is shown as code by both renderers.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from medvtab.bench.report.load import Bench, Run
from medvtab.bench.report.stats import mean_std
from medvtab.data.catalogue import get_task
from medvtab.errors import MedvtabError

# Display order of the papers' tables (unknown methods follow, alphabetically); DynaMer last.
METHOD_ORDER = ("linear", "full", "partial", "vpt-shallow", "vpt-deep", "gapt", "lspt", "adapter-general",
                "adapter-medical", "lora", "mof-adapter", "moe-adapter", "gmoe-adapter", "dynamer")
MISSING = "–"
FLOOR_MARK = "†"
FLOOR_NOTE = f"{FLOOR_MARK} at or below the task's majority-class rate (a classifier that always answers the " \
             f"most frequent test class)."
CODE_SPAN = re.compile(r"`([^`]*)`")


@dataclass
class Cell:
    text: str
    value: float = math.nan  # what "best" compares
    best: bool = False
    mark: str = ""  # e.g. the floor mark

    def __str__(self) -> str:
        return self.text + self.mark


@dataclass
class Table:
    key: str
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)

    def column(self, name: str) -> list[Cell]:
        i = self.columns.index(name)
        return [row[i] for row in self.rows]

    def row(self, label: str) -> list[Cell]:
        for row in self.rows:
            if row[0].text == label:
                return row
        raise KeyError(label)


@dataclass
class FigureRef:
    key: str
    path: Path
    caption: str


@dataclass
class Section:
    key: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[FigureRef] = field(default_factory=list)


@dataclass
class Report:
    title: str
    header: list[tuple[str, str]]
    sections: list[Section]
    html_path: Path | None = None
    md_path: Path | None = None

    def table(self, key: str) -> Table:
        for s in self.sections:
            for t in s.tables:
                if t.key == key:
                    return t
        raise KeyError(key)

    def tables(self) -> dict[str, Table]:
        return {t.key: t for s in self.sections for t in s.tables}

    def figures(self) -> dict[str, FigureRef]:
        return {f.key: f for s in self.sections for f in s.figures}


def group_section(bench: Bench, group: str, title: str) -> tuple[list[Run], Section]:
    """The runs of a grid group and its (so far empty) section, which says so when the grid has no such runs."""
    runs = bench.group(group)
    section = Section(group, title)
    if not runs:
        section.paragraphs.append(f"No runs of group '{group}' in this grid.")
    return runs, section


# --- cells ------------------------------------------------------------------------------------------------

def C(text, value: float = math.nan) -> Cell:  # noqa: N802 - a short constructor for table cells
    return Cell(str(text), value)


def mark_best(rows: list[list[Cell]], columns: list[int], higher: bool = True) -> None:
    """Mark the best finite value of each column (all of them on a tie)."""
    for c in columns:
        values = [row[c].value for row in rows if math.isfinite(row[c].value)]
        if not values:
            continue
        best = max(values) if higher else min(values)
        for row in rows:
            if math.isfinite(row[c].value) and abs(row[c].value - best) <= 1e-12:
                row[c].best = True


def fmt_pct(mean: float, std: float, n: int, expected: int | None = None) -> str:
    if n == 0:
        return MISSING
    text = f"{100 * mean:.2f}"
    if n > 1 and math.isfinite(std):
        text += f" ± {100 * std:.2f}"
    if expected and n < expected:
        text += f" (n={n})"
    return text


def pct_cell(values, expected: int | None = None, floor: float = math.nan) -> Cell:
    mean, std, n = mean_std(values)
    cell = Cell(fmt_pct(mean, std, n, expected), mean)
    if n and math.isfinite(floor) and mean <= floor + 1e-12:
        cell.mark = FLOOR_MARK
    return cell


def ratio_cell(runs: list[Run]) -> Cell:
    mean, _, n = mean_std([r.metric("params_ratio") for r in runs])
    return Cell(f"{mean:.3f}X" if n else MISSING, mean)


def floor_row(floor: dict[str, float], tasks: list[str], blanks: int) -> list[Cell]:
    """The last row of an accuracy table: each task's majority-class rate, after ``blanks`` empty cells."""
    return [C("majority class (floor)")] + [C("") for _ in range(blanks)] + [
        C(fmt_pct(floor.get(t, math.nan), math.nan, int(math.isfinite(floor.get(t, math.nan)))),
          floor.get(t, math.nan)) for t in tasks]


def seed_note(n: int, metric: str = "accuracy") -> str:
    what = metric.replace("_", " ")
    if n <= 1:
        return f"Test {what} in %, one seed per cell (no spread); bold: best in its column."
    return f"Test {what} in %, mean ± sample standard deviation over {n} seeds ((n=k) where fewer finished); " \
           f"bold: best mean in its column."


# --- rows: runs grouped by method configuration ---------------------------------------------------------------

def ordered(items) -> list:
    """The distinct items in first-seen order."""
    return list(dict.fromkeys(items))


def row_key(run: Run) -> tuple:
    """Runs of one table row: same method, options, training overrides and backbones (any task, seed); the fields
    the grid tuned are not part of it (each task has its own chosen value: the tuning section lists them)."""
    spec = run.spec
    options = {k: v for k, v in spec.options.items() if k not in run.tuned}
    train = {k: v for k, v in spec.train.items() if k not in run.tuned}
    return (spec.method, json.dumps(options, sort_keys=True), json.dumps(train, sort_keys=True), spec.general,
            spec.medical)


def _method_rank(key: tuple):
    method = key[0]
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method, key[1:])


def row_labels(keys: list[tuple]) -> dict[tuple, str]:
    """Readable, unique row labels: the method and its options; training overrides and backbones only where
    they differ between rows of the same method."""
    labels = {}
    for k in keys:
        same = [o for o in keys if o[0] == k[0]]
        extra = [f"{a}={b}" for a, b in sorted(json.loads(k[1]).items())]
        train = json.loads(k[2])
        for a, b in sorted(train.items()):
            if any(json.loads(o[2]).get(a) != b for o in same):
                extra.append(f"{a}={b}")
        if any((o[3], o[4]) != (k[3], k[4]) for o in same):
            extra.append(f"{k[3]} + {k[4]}")
        labels[k] = k[0] + (f" ({', '.join(extra)})" if extra else "")
    return labels


def sorted_keys(runs: list[Run]) -> list[tuple]:
    return sorted(ordered(row_key(r) for r in runs), key=_method_rank)


def by_row_task(runs: list[Run]) -> dict[tuple, dict[str, list[Run]]]:
    out: dict[tuple, dict[str, list[Run]]] = {}
    for r in runs:
        if r.finished:
            out.setdefault(row_key(r), {}).setdefault(r.spec.task, []).append(r)
    return out


def modality(task: str) -> str:
    """'colour', 'x-ray' or 'other' from the task registry (unregistered tasks: 'other')."""
    try:
        mod = get_task(task).modality
    except (MedvtabError, KeyError, ValueError):
        return "other"
    if mod.startswith("colour") or mod == "microscopy":
        return "colour"
    return "x-ray" if mod == "x-ray" else "other"


def floors(runs: list[Run]) -> dict[str, float]:
    """Majority-class rate of each task's test set (from the runs' metrics)."""
    out = {}
    for task in ordered(r.spec.task for r in runs):
        out[task] = mean_std([r.metric("majority_rate") for r in runs if r.spec.task == task])[0]
    return out


def expected_seeds(runs: list[Run]) -> int:
    counts: dict[tuple, set] = {}
    for r in runs:
        counts.setdefault((row_key(r), r.spec.task), set()).add(r.spec.seed)
    return max((len(v) for v in counts.values()), default=0)


def accuracy_table(key: str, title: str, runs: list[Run], tasks: list[str], row_keys: list[tuple],
                   labels: dict) -> Table:
    """One row per row key: the method, Total Params, then the accuracy per task (best marked, at-or-below-floor
    marked), the majority-class floor as a last row."""
    cells = by_row_task(runs)
    floor = floors([r for r in runs if r.finished])
    n_expected = expected_seeds(runs)
    rows = []
    for k in row_keys:
        row_runs = [r for t in tasks for r in cells.get(k, {}).get(t, [])]  # Total Params: this table's tasks
        row = [C(labels[k]), ratio_cell(row_runs)]
        row += [pct_cell([r.metric("accuracy") for r in cells.get(k, {}).get(t, [])], n_expected,
                         floor.get(t, math.nan)) for t in tasks]
        rows.append(row)
    mark_best(rows, list(range(2, 2 + len(tasks))))
    rows.append(floor_row(floor, tasks, 1))
    return Table(key, title, ["Method", "Total Params"] + list(tasks), rows, [seed_note(n_expected), FLOOR_NOTE])
