"""``medvtab report DIR``: the results of a bench directory as the papers' tables and figures, in
``DIR/report.md`` and a self-contained ``DIR/report.html`` (figures inlined as data URIs), PNGs in
``DIR/figures/``.

Every number comes from the store (``bench.json`` and the run directories); nothing is hard-coded. Any group
may be absent or partial: tables show what exists, and the unfinished runs are listed. Tables are built once
as plain cells (:class:`Table`) and rendered twice; the HTML renderer escapes every string, so names from
data (tasks, classes, methods, run ids, paths) can never become markup.

Statistics: mean and sample standard deviation over seeds; DynaMer against each baseline on the paired
(task, seed) accuracies with a two-sided Wilcoxon signed-rank test from :data:`MIN_WILCOXON` pairs on, a
paired t-test from :data:`MIN_TTEST` to :data:`MIN_WILCOXON` - 1 pairs, no test below that; p-values are
Holm-adjusted over the baselines.
"""
from __future__ import annotations

import base64
import datetime
import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medvtab.atomic import atomic_write
from medvtab.bench.store import RUNS, RunSpec, read_grid, run_dir
from medvtab.errors import MedvtabError

MIN_WILCOXON, MIN_TTEST, ALPHA = 6, 3, 0.05
MAIN, OOD, FEWSHOT = "main", "patient-ood", "fewshot"
GATES, GATE_DIM, LAYERS, KEEP = "ablation-gates", "ablation-gate-dim", "ablation-layers", "ablation-keep-ratio"
KNOWN_GROUPS = (MAIN, OOD, FEWSHOT, GATES, GATE_DIM, LAYERS, KEEP)
# Display order of the papers' tables (unknown methods follow, alphabetically); DynaMer last.
METHOD_ORDER = ("linear", "full", "partial", "vpt-shallow", "vpt-deep", "gapt", "lspt", "adapter-general",
                "adapter-medical", "lora", "mof-adapter", "moe-adapter", "gmoe-adapter", "dynamer")
MODALITY_TABLES = (("colour", "Colour images (the papers' Table 1)"),
                   ("x-ray", "X-ray images (Table 2)"),
                   ("other", "OCT, CT, MRI, ultrasound and other modalities (Table 3)"))
FIGURE_NAMES = ("params_accuracy.png", "data_efficiency.png", "attention.png", "routing.png")
MISSING = "–"
FLOOR_MARK = "†"
FLOOR_NOTE = f"{FLOOR_MARK} at or below the task's majority-class rate (a classifier that always answers the " \
             f"most frequent test class)."


# ----------------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MedvtabError(f"{path}: unreadable results file ({str(err).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise MedvtabError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def _num(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


@dataclass
class Run:
    """One spec of the grid and, when its run has finished, its metrics and config."""
    spec: RunSpec
    run_id: str
    dir: Path
    metrics: dict | None
    config: dict | None

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    def metric(self, key: str, within: str | None = None) -> float:
        m = self.metrics or {}
        if within is not None:
            m = m.get(within) if isinstance(m.get(within), dict) else {}
        return _num(m.get(key))

    def method_config(self) -> dict:
        """The method's effective options: the run's recorded config, else the spec's options over the
        method's defaults."""
        if self.config and isinstance(self.config.get("method_config"), dict):
            return self.config["method_config"]
        try:
            from medvtab.methods import make_config
            return make_config(self.spec.method, dict(self.spec.options)).model_dump()
        except MedvtabError:
            return dict(self.spec.options)


@dataclass
class Bench:
    root: Path
    info: dict
    runs: list[Run]
    extra_runs: list[str]  # finished run directories not in the grid
    staged: list[str]  # staged (in progress or interrupted) run directories
    failures: dict[str, dict] = field(default_factory=dict)  # run_id -> DIR/failures/<run_id>.json record

    def group(self, name: str) -> list[Run]:
        return [r for r in self.runs if r.spec.group == name]

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.finished]


def load_bench(root: Path) -> Bench:
    """Read a bench directory; a missing directory, no grid or a corrupt JSON file is a MedvtabError."""
    root = Path(root)
    if not root.exists():
        raise MedvtabError(f"{root}: no such directory")
    if not root.is_dir():
        raise MedvtabError(f"{root}: not a directory; expected a `medvtab bench --out` directory")
    try:
        info, specs = read_grid(root)
    except AttributeError:
        raise MedvtabError(f"{root / 'bench.json'}: malformed grid (not a JSON object)") from None
    runs, ids = [], set()
    for spec in specs:
        d = run_dir(root, spec)
        metrics = config = None
        if (d / "metrics.json").is_file():
            metrics = _read_json(d / "metrics.json")
            config = _read_json(d / "config.json")
        runs.append(Run(spec, spec.run_id(), d, metrics, config))
        ids.add(spec.run_id())
    from medvtab.bench.runner import read_failures
    failures = read_failures(root)
    extra, staged = [], []
    runs_dir = root / RUNS
    if runs_dir.is_dir():
        for d in sorted(runs_dir.iterdir()):
            if d.name.startswith("."):
                staged.append(d.name)
            elif d.is_dir() and d.name not in ids and (d / "metrics.json").is_file():
                extra.append(d.name)
    return Bench(root, info, runs, extra, staged, {k: v for k, v in failures.items() if k in ids})


# ----------------------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------------------
def mean_std(values) -> tuple[float, float, int]:
    """(mean, sample standard deviation (NaN for one value), count) of the finite values."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not len(v):
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.array(pvalues, dtype=float)
    out = np.full(len(p), math.nan)
    idx = [i for i in np.argsort(p) if math.isfinite(p[i])]
    m, running = len(idx), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def paired_test(ours, theirs) -> dict:
    """Paired comparison of two accuracy arrays (same (task, seed) order).

    Returns n, mean difference (ours - theirs), wins/ties/losses, the test used ("Wilcoxon signed-rank",
    "paired t-test" or "none"), its statistic and two-sided p (NaN without a test), and a plain note on
    what the test can say."""
    a, b = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired_test: arrays of different shapes {a.shape} and {b.shape}")
    d = a - b
    n = len(d)
    out = {"n": n, "mean_diff": float(d.mean()) if n else math.nan, "wins": int((d > 0).sum()),
           "ties": int((d == 0).sum()), "losses": int((d < 0).sum()), "test": "none",
           "statistic": math.nan, "p": math.nan, "note": ""}
    if n == 0:
        out["note"] = "no pairs: nothing to compare"
    elif n < MIN_TTEST:
        out["note"] = (f"only {n} pair{'s' if n > 1 else ''}: too few for any test, so the difference is not "
                       f"significant (no power)")
    elif not d.any():
        out["note"] = f"identical in all {n} pairs: no difference"
    elif n >= MIN_WILCOXON:
        from scipy.stats import wilcoxon
        res = wilcoxon(a, b)
        out.update(test="Wilcoxon signed-rank", statistic=float(res.statistic), p=float(res.pvalue))
        nonzero = int((d != 0).sum())
        smallest = 2.0 / 2 ** nonzero
        if smallest > ALPHA:
            out["note"] = (f"only {nonzero} non-zero differences: the smallest p this test can give is "
                           f"{smallest:.3g}, so it cannot reach significance (no power)")
    else:
        if np.std(d, ddof=1) == 0:
            out.update(test="paired t-test", note=f"all {n} differences equal ({d[0]:+.4g}): t is undefined")
        else:
            from scipy.stats import ttest_rel
            res = ttest_rel(a, b)
            out.update(test="paired t-test", statistic=float(res.statistic), p=float(res.pvalue),
                       note=f"only {n} pairs: paired t-test (assumes normally distributed differences); "
                            f"little power")
    return out


def verdict(result: dict, p_adjusted: float) -> str:
    if math.isfinite(p_adjusted) and p_adjusted < ALPHA:
        return f"significant: DynaMer {'better' if result['mean_diff'] > 0 else 'worse'}"
    if math.isfinite(p_adjusted):
        return "not significant" + (f" ({result['note']})" if result["note"] else "")
    return result["note"] or "no test"


# ----------------------------------------------------------------------------------------------------------
# tables: plain cells, rendered to markdown and HTML
# ----------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------
# grouping helpers
# ----------------------------------------------------------------------------------------------------------
def _ordered(items):
    return list(dict.fromkeys(items))


def row_key(spec: RunSpec) -> tuple:
    """Runs of one table row: same method, options, training overrides and backbones (any task, seed)."""
    return (spec.method, json.dumps(spec.options, sort_keys=True), json.dumps(spec.train, sort_keys=True),
            spec.general, spec.medical)


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
    return sorted(_ordered(row_key(r.spec) for r in runs), key=_method_rank)


def by_row_task(runs: list[Run]) -> dict[tuple, dict[str, list[Run]]]:
    out: dict[tuple, dict[str, list[Run]]] = {}
    for r in runs:
        if r.finished:
            out.setdefault(row_key(r.spec), {}).setdefault(r.spec.task, []).append(r)
    return out


def modality(task: str) -> str:
    """'colour', 'x-ray' or 'other' from the task registry (unregistered tasks: 'other')."""
    from medvtab.data.registry import get_task
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
    for task in _ordered(r.spec.task for r in runs):
        out[task] = mean_std([r.metric("majority_rate") for r in runs if r.spec.task == task])[0]
    return out


def expected_seeds(runs: list[Run]) -> int:
    counts: dict[tuple, set] = {}
    for r in runs:
        counts.setdefault((row_key(r.spec), r.spec.task), set()).add(r.spec.seed)
    return max((len(v) for v in counts.values()), default=0)


def accuracy_table(key: str, title: str, runs: list[Run], tasks: list[str], lead: list[tuple[str, callable]],
                   row_keys: list[tuple], labels: dict, notes: list[str] | None = None,
                   metric: str = "accuracy") -> Table:
    """Rows ``row_keys`` (each with ``lead`` columns: (name, fn(row key, runs of the row) -> Cell)),
    Total Params, then the metric per task, best marked, the majority-class floor as a last row."""
    cells = by_row_task(runs)
    floor = floors([r for r in runs if r.finished])
    n_expected = expected_seeds(runs)
    rows = []
    for k in row_keys:
        row_runs = [r for t in tasks for r in cells.get(k, {}).get(t, [])]  # Total Params: this table's tasks
        row = [C(labels[k])] + [fn(k, row_runs) for _, fn in lead] + [ratio_cell(row_runs)]
        row += [pct_cell([r.metric(metric) for r in cells.get(k, {}).get(t, [])], n_expected,
                         floor.get(t, math.nan) if metric == "accuracy" else math.nan) for t in tasks]
        rows.append(row)
    first = 2 + len(lead)
    mark_best(rows, list(range(first, first + len(tasks))))
    if metric == "accuracy":
        rows.append([C("majority class (floor)")] + [C("") for _ in lead] + [C("")]
                    + [C(fmt_pct(floor.get(t, math.nan), math.nan, int(math.isfinite(floor.get(t, math.nan)))),
                         floor.get(t, math.nan)) for t in tasks])
    columns = ["Method"] + [name for name, _ in lead] + ["Total Params"] + list(tasks)
    notes = list(notes or [])
    notes.append(_seed_note(n_expected, metric))
    if metric == "accuracy":
        notes.append(FLOOR_NOTE)
    return Table(key, title, columns, rows, notes)


def _seed_note(n: int, metric: str = "accuracy") -> str:
    what = metric.replace("_", " ")
    if n <= 1:
        return f"Test {what} in %, one seed per cell (no spread); bold: best in its column."
    return f"Test {what} in %, mean ± sample standard deviation over {n} seeds ((n=k) where fewer finished); " \
           f"bold: best mean in its column."


# ----------------------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------------------
def _describe_machine(config: dict) -> str:
    m = config.get("machine") if isinstance(config.get("machine"), dict) else {}
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    parts = [str(m.get("platform", "unknown platform")), f"Python {m.get('python', '?')}",
             f"torch {m.get('torch', '?')}", f"torch threads {m.get('threads', '?')}",
             f"device {train.get('device', '?')}"]
    return ", ".join(parts)


def reproduce_command(bench: Bench) -> str:
    """The `medvtab bench` command that fills this directory, from what bench.json recorded."""
    info = bench.info
    if info.get("command"):
        return str(info["command"])
    parts = ["medvtab bench"]
    parts.append(f"--config {info['config']}" if info.get("config") else f"--suite {info.get('suite', '?')}")
    if info.get("profile") == "quick":
        parts.append("--quick")
    if info.get("methods"):
        parts.append("--methods " + ",".join(map(str, info["methods"])))
    if info.get("seeds"):
        parts.append(f"--seeds {info['seeds']}")
    if info.get("device") and info.get("device") != "cpu":
        parts.append(f"--device {info['device']}")
    if info.get("executor") and info.get("executor") != "serial":
        parts.append(f"--executor {info['executor']}")
    parts.append(f"--out {bench.root}")
    return " ".join(parts)


def header(bench: Bench, out: Path) -> list[tuple[str, str]]:
    specs = [r.spec for r in bench.runs]
    done = bench.finished
    machines: dict[str, int] = {}
    for r in done:
        text = _describe_machine(r.config or {})
        machines[text] = machines.get(text, 0) + 1
    stamps = sorted((r.dir / "metrics.json").stat().st_mtime for r in done)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if stamps:
        span = [datetime.datetime.fromtimestamp(s, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
                for s in (stamps[0], stamps[-1])]
        ran = f"{span[0]} to {span[1]} UTC (run directories' finish times)"
    else:
        ran = "no finished runs"
    random_init = sorted({b.get("spec", "?") for r in done for b in (r.config or {}).get("backbones", [])
                          if isinstance(b, dict) and b.get("random_init")})
    pairs = _ordered(f"{s.general} + {s.medical}" for s in specs)
    suite = str(bench.info.get("suite", "?"))
    command = reproduce_command(bench)
    epochs = sorted({str((r.config or {}).get("train", {}).get("epochs", "?")) for r in done})
    rows = [
        ("Generated", when),
        ("Bench directory", str(bench.root)),
        ("Suite", suite),
        ("Runs", f"{len(done)} of {len(bench.runs)} grid runs finished"
                 + (f"; {len(bench.runs) - len(done)} missing, of them {len(bench.failures)} failed (listed at the "
                    f"end)" if len(done) < len(bench.runs) else "")),
        ("Groups", ", ".join(f"{g} ({sum(r.finished for r in bench.group(g))}/{len(bench.group(g))})"
                             for g in _ordered(s.group for s in specs)) or "none"),
        ("Seeds", ", ".join(str(s) for s in sorted({s.seed for s in specs})) or "none"),
        ("Tasks", ", ".join(_ordered(s.task for s in specs)) or "none"),
        ("Backbones (general + medical)", "; ".join(pairs) or "none"),
        ("Epochs", ", ".join(epochs) or "?"),
        ("Machine", "; ".join(f"{m} ({n} runs)" for m, n in machines.items()) or "unknown (no finished runs)"),
        ("Runs finished", ran),
        ("Reproduce", f"`{command}` then `medvtab report {bench.root}`"
                      + (f" (this report: `{out}`)" if out else "")),
    ]
    for k, v in bench.info.items():
        if k not in ("suite", "command") and isinstance(v, (str, int, float, bool)):
            rows.append((f"Grid: {k}", str(v)))
    if random_init:
        rows.append(("Note", f"randomly initialised backbones ({', '.join(random_init)}): these numbers show that "
                             f"the machinery works, not how the methods compare with pre-trained experts"))
    return rows


def tasks_section(bench: Bench) -> Section:
    rows = []
    from medvtab.data.registry import get_task
    for task in _ordered(r.spec.task for r in bench.runs):
        runs = [r for r in bench.runs if r.spec.task == task]
        done = [r for r in runs if r.finished]
        try:
            info = get_task(task)
            title, mod = info.title, info.modality
        except (MedvtabError, KeyError, ValueError):
            title, mod = "(not in the registry)", "unknown"
        names = next((r.config.get("class_names") for r in done if isinstance(r.config.get("class_names"), list)),
                     None)
        standard = [r for r in done if r.spec.protocol == "standard"]
        test_sizes = _ordered(str(r.metrics.get("split_sizes", {}).get("test", "?")) for r in standard)
        floor = mean_std([r.metric("majority_rate") for r in standard])[0]
        rows.append([C(task), C(title), C(mod), C(", ".join(map(str, names)) if names else MISSING),
                     C(" / ".join(test_sizes) or MISSING),
                     C(fmt_pct(floor, math.nan, int(math.isfinite(floor))), floor),
                     C(f"{len(done)}/{len(runs)}")])
    table = Table("tasks", "Tasks in this grid",
                  ["Task", "Title", "Modality", "Classes", "Test images (standard protocol)", "Majority-class rate (%)",
                   "Runs finished"], rows,
                  ["Modality from the task registry (medvtab data list); class names from the runs' config.json."])
    return Section("tasks", "Tasks", tables=[table])


def _dynamer_key(keys: list[tuple]) -> tuple | None:
    dyn = [k for k in keys if k[0] == "dynamer"]
    plain = [k for k in dyn if k[1] == "{}" and k[2] == "{}"]
    return (plain or dyn or [None])[0]


def main_section(bench: Bench, figures_dir: Path) -> Section:
    runs = [r for r in bench.group(MAIN)]
    section = Section("main", "Main results (Tables 1-3)")
    if not runs:
        section.paragraphs.append("No runs of group 'main' in this grid.")
        return section
    tasks = _ordered(r.spec.task for r in runs)
    keys = sorted_keys(runs)
    labels = row_labels(keys)
    lead: list = []
    section.paragraphs.append(
        "Test accuracy per task and method, one table per modality as in the papers (colour; X-ray; OCT, CT, MRI "
        "and the rest; modality from the task registry), with Total Params = (one backbone + everything the method "
        "adds) / one backbone; then balanced accuracy and AUROC, and a paired test of DynaMer against each "
        "baseline.")
    for mod, title in MODALITY_TABLES:
        these = [t for t in tasks if modality(t) == mod]
        if these:
            section.tables.append(accuracy_table(f"main-{mod}", title, runs, these, lead, keys, labels))
    # balanced accuracy and AUROC: one table, two columns per task
    cells = by_row_task(runs)
    n_expected = expected_seeds(runs)
    rows = []
    for k in keys:
        row = [C(labels[k])]
        for t in tasks:
            rs = cells.get(k, {}).get(t, [])
            row += [pct_cell([r.metric("balanced_accuracy") for r in rs], n_expected),
                    pct_cell([r.metric("auroc") for r in rs], n_expected)]
        rows.append(row)
    mark_best(rows, list(range(1, 1 + 2 * len(tasks))))
    chance = [C("chance")]
    for t in tasks:
        k_classes = next((r.config.get("num_classes") for r in runs if r.finished and r.spec.task == t), None)
        bal = 1.0 / k_classes if isinstance(k_classes, int) and k_classes > 0 else math.nan
        chance += [C(fmt_pct(bal, math.nan, int(math.isfinite(bal))), bal), C(fmt_pct(0.5, math.nan, 1), 0.5)]
    rows.append(chance)
    columns = ["Method"] + [f"{t} {m}" for t in tasks for m in ("bal. acc.", "AUROC")]
    section.tables.append(Table(
        "main-balanced-auroc", "Balanced accuracy and AUROC", columns, rows,
        [_seed_note(n_expected, "balanced accuracy and macro one-vs-rest AUROC"),
         "Chance: balanced accuracy 1/K for K classes (any constant answer), AUROC 50."]))
    section.tables.append(paired_table(runs, keys, labels))
    fig = params_figure(runs, keys, labels, tasks, figures_dir)
    if fig:
        section.figures.append(fig)
    return section


def paired_table(runs: list[Run], keys: list[tuple], labels: dict) -> Table:
    dyn = _dynamer_key(keys)
    title = "DynaMer against each baseline (paired over tasks and seeds)"
    columns = ["Baseline", "Pairs (task × seed)", "DynaMer wins / ties / losses", "Mean difference (pp)",
               "Test", "Statistic", "p", "Holm p", "Verdict"]
    if dyn is None:
        return Table("paired-test", title, columns, [], ["No DynaMer runs in group 'main': nothing to test."])
    acc = {(row_key(r.spec), r.spec.task, r.spec.seed): r.metric("accuracy") for r in runs if r.finished}
    results = []
    for k in keys:
        if k == dyn:
            continue
        pairs = sorted((t, s) for (kk, t, s), v in acc.items()
                       if kk == k and math.isfinite(v) and math.isfinite(acc.get((dyn, t, s), math.nan)))
        ours = [acc[(dyn, t, s)] for t, s in pairs]
        theirs = [acc[(k, t, s)] for t, s in pairs]
        results.append((k, paired_test(ours, theirs)))
    adjusted = holm([res["p"] for _, res in results])
    rows = []
    for (k, res), p_adj in zip(results, adjusted):
        rows.append([C(labels[k]), C(res["n"]), C(f"{res['wins']} / {res['ties']} / {res['losses']}"),
                     C(f"{100 * res['mean_diff']:+.2f}" if res["n"] else MISSING, res["mean_diff"]),
                     C(res["test"]), C(f"{res['statistic']:.3g}" if math.isfinite(res["statistic"]) else MISSING),
                     C(f"{res['p']:.3g}" if math.isfinite(res["p"]) else MISSING, res["p"]),
                     C(f"{p_adj:.3g}" if math.isfinite(p_adj) else MISSING, p_adj),
                     C(verdict(res, p_adj))])
    notes = [f"DynaMer row: {labels[dyn]}. Pairs are the accuracies of the same task and seed. Test: two-sided "
             f"Wilcoxon signed-rank from {MIN_WILCOXON} pairs on, paired t-test for {MIN_TTEST}-{MIN_WILCOXON - 1} "
             f"pairs, none below {MIN_TTEST}; p-values Holm-adjusted over the {sum(map(math.isfinite, adjusted))} "
             f"baselines tested; significant at {ALPHA}. Seeds of one task share its test set, so pairs are not "
             f"fully independent: treat p as optimistic."]
    return Table("paired-test", title, columns, rows, notes)


def params_figure(runs, keys, labels, tasks, figures_dir: Path) -> FigureRef | None:
    from medvtab.bench import figures
    cells = by_row_task(runs)
    complete = [k for k in keys if all(cells.get(k, {}).get(t) for t in tasks)]
    use, note = complete, ""
    if not complete:
        use = [k for k in keys if cells.get(k)]
        note = " No method has finished every task: each point averages the tasks it has."
    points = []
    for k in use:
        row_runs = [r for rs in cells.get(k, {}).values() for r in rs]
        params = mean_std([r.metric("trainable_params") for r in row_runs])[0]
        task_means = [mean_std([r.metric("accuracy") for r in rs])[0] for t, rs in cells.get(k, {}).items()
                      if t in tasks]
        acc = mean_std(task_means)[0]
        if math.isfinite(params) and params > 0 and math.isfinite(acc):
            points.append((labels[k], params, acc))
    if not points:
        return None
    left_out = [labels[k] for k in keys if k not in use]
    if left_out:
        note += f" Left out (not every task finished): {', '.join(left_out)}."
    path = figures.params_accuracy(points, figures_dir / "params_accuracy.png",
                                   "test accuracy (%), mean over tasks")
    return FigureRef("params_accuracy", path,
                     f"Accuracy against trainable parameters (the paper's Figure 1a): mean over the tasks "
                     f"{', '.join(tasks)} of each method's mean over seeds.{note}")


def fewshot_section(bench: Bench, figures_dir: Path) -> Section:
    from medvtab.bench import figures
    runs = bench.group(FEWSHOT)
    section = Section("fewshot", "Data efficiency (Figure 1c)")
    if not runs:
        section.paragraphs.append("No runs of group 'fewshot' in this grid.")
        return section

    def amount(spec: RunSpec) -> tuple[str, float]:
        if spec.train_fraction is not None:
            return "fraction", spec.train_fraction
        if spec.shots is not None:
            return "shots", float(spec.shots)
        return "full", 1.0

    kinds = _ordered(amount(r.spec)[0] for r in runs)
    xlabel = {"fraction": "fraction of the training set", "shots": "training images per class"}.get(
        kinds[0] if len(kinds) == 1 else "", "training fraction or shots per class")
    keys = sorted_keys(runs)
    labels = row_labels(keys)
    tasks = _ordered(r.spec.task for r in runs)
    amounts = sorted(_ordered(amount(r.spec) for r in runs), key=lambda a: (a[0], a[1]))
    n_expected = max((len({r.spec.seed for r in runs if row_key(r.spec) == k and r.spec.task == t
                           and amount(r.spec) == a}) for k in keys for t in tasks for a in amounts), default=0)
    rows = []
    curves: dict[str, dict[str, list]] = {}
    for k in keys:
        row = [C(labels[k])]
        for t in tasks:
            for a in amounts:
                vals = [r.metric("accuracy") for r in runs if r.finished and row_key(r.spec) == k
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
                                [_seed_note(n_expected) + " Column: task and training fraction (or shots per "
                                                          "class); validation and test sets are the full ones."]))
    if curves:
        floor = floors([r for r in runs if r.finished])
        path = figures.data_efficiency(curves, floor, xlabel, figures_dir / "data_efficiency.png")
        section.figures.append(FigureRef(
            "data_efficiency", path, "Test accuracy against the amount of training data (the paper's Figure 1c), "
                                     "mean ± standard deviation over seeds; dashed: majority-class rate."))
    return section


def ood_section(bench: Bench) -> Section:
    runs = bench.group(OOD)
    section = Section("patient-ood", "Patient out-of-distribution (Tables 8-9)")
    if not runs:
        section.paragraphs.append("No runs of group 'patient-ood' in this grid.")
        return section
    section.paragraphs.append(
        "Seen: held-out images of the patients trained on; unseen: every image of patients never seen in "
        "training or validation. Drop = seen - unseen, per seed, in percentage points (positive: worse on new "
        "patients).")
    settings = _ordered((r.spec.task, r.spec.seen, r.spec.unseen) for r in runs)
    for task, seen, unseen in settings:
        these = [r for r in runs if (r.spec.task, r.spec.seen, r.spec.unseen) == (task, seen, unseen)]
        keys = sorted_keys(these)
        labels = row_labels(keys)
        n_expected = expected_seeds(these)
        rows = []
        for k in keys:
            rs = [r for r in these if r.finished and row_key(r.spec) == k]

            def counts(within, what):
                vals = _ordered(str(int(v)) for v in (r.metric(what, within) for r in rs) if math.isfinite(v))
                return C(" / ".join(vals) or MISSING)

            row = [C(labels[k]), ratio_cell(rs), counts("seen", "patients"), counts("seen", "images"),
                   counts("unseen", "patients"), counts("unseen", "images")]
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
                                    [_seed_note(n_expected, "accuracy and AUROC") + " Bold drop: smallest.",
                                     "Patient and image counts per seed (several values: they differ by seed)."]))
    return section


def _gate_dims(run_cfg: dict, widths: list[int] | None) -> list[str]:
    gates, dim = run_cfg.get("gates", "both"), str(run_cfg.get("gate_dim", "width"))
    out = []
    for s, stream in enumerate(("general", "medical")):
        if gates not in ("both", stream):
            out.append("0")
        elif widths:
            w = widths[s]
            value = {"width": w, "width/2": w // 2, "width/4": w // 4, "1": 1}.get(dim)
            out.append(dim if value is None else str(value) if str(value) == dim else f"{value} ({dim})")
        else:
            out.append(dim)
    return out


def _layer_counts(run_cfg: dict, depth: int | None) -> list[str]:
    gates, layers = run_cfg.get("gates", "both"), str(run_cfg.get("layers", "all"))
    count = layers
    if depth:
        try:
            from medvtab.methods.dynamer.config import parse_layers
            count = f"{len(parse_layers(layers, depth))} ({layers})"
        except MedvtabError:
            pass
    return [count if gates in ("both", stream) else "0" for stream in ("general", "medical")]


def _backbone_field(runs: list[Run], name: str) -> list | None:
    for r in runs:
        bbs = (r.config or {}).get("backbones")
        if isinstance(bbs, list) and len(bbs) == 2 and all(isinstance(b, dict) and name in b for b in bbs):
            return [b[name] for b in bbs]
    return None


def ablation_section(bench: Bench, group: str) -> Section:
    from medvtab.methods.dynamer.config import SKIP_MODES

    titles = {GATES: ("Ablation: gates (Table 4)", "Accuracy with and without each stream's gate",
                      ["General gate", "Medical gate"]),
              GATE_DIM: ("Ablation: gate dimension (Table 5)", "Accuracy by gate dimension",
                         ["General gate dim", "Medical gate dim"]),
              LAYERS: ("Ablation: gated layers (Table 6)", "Accuracy by number of layers with a DynaMer layer",
                       ["General gated layers", "Medical gated layers"]),
              KEEP: ("Ablation: skipping router keep ratio, inference time (Table 7)",
                     "Inference time and accuracy by share of tokens routed",
                     ["Tokens routed", "Skip mode", "ms per batch", "Speed-up vs 100 %", "Images/s"])}
    title, table_title, lead_names = titles[group]
    runs = bench.group(group)
    section = Section(group, title)
    if not runs:
        section.paragraphs.append(f"No runs of group '{group}' in this grid.")
        return section
    tasks = _ordered(r.spec.task for r in runs)

    def variant(r: Run) -> tuple:
        cfg = r.method_config()
        if group == GATES:
            return (cfg.get("gates"),)
        if group == GATE_DIM:
            return cfg.get("gates"), str(cfg.get("gate_dim"))
        if group == LAYERS:
            return cfg.get("gates"), str(cfg.get("layers"))
        return float(cfg.get("keep_ratio", 1.0)), str(cfg.get("skip_mode", "adapter"))

    variants = _ordered(variant(r) for r in runs)
    widths, depth = _backbone_field(runs, "width"), (_backbone_field(runs, "depth") or [None])[0]
    gate_rank = {"none": 0, "general": 1, "medical": 2, "both": 3}
    mode_rank = {mode: i for i, mode in enumerate(SKIP_MODES)}

    def display(v: tuple) -> list[str]:
        if group == GATES:
            return ["✓" if v[0] in ("both", s) else "✗" for s in ("general", "medical")]
        if group == GATE_DIM:
            return _gate_dims({"gates": v[0], "gate_dim": v[1]}, widths)
        if group == LAYERS:
            return _layer_counts({"gates": v[0], "layers": v[1]}, depth)
        return [f"{100 * v[0]:g} %", v[1]]

    def order(v: tuple):
        if group == GATES:
            return gate_rank.get(v[0], 9)
        if group == KEEP:
            return -v[0], mode_rank.get(v[1], 9)
        dims = [int(re.match(r"\d+", s).group()) if re.match(r"\d+", s) else 0 for s in display(v)]
        return (0, sum(dims)) if min(dims) == 0 else (1, -sum(dims))

    variants.sort(key=order)
    cells = {v: [r for r in runs if r.finished and variant(r) == v] for v in variants}
    floor = floors([r for r in runs if r.finished])
    n_expected = max((len({r.spec.seed for r in rs if r.spec.task == t}) for rs in cells.values() for t in tasks),
                     default=0)
    timing = {}
    if group == KEEP:
        for v, rs in cells.items():
            timing[v] = mean_std([r.metric("ms_per_batch") for r in rs])
    rows = []
    for v in variants:
        rs = cells[v]
        row = [C(x) for x in display(v)]
        if group == KEEP:
            ms, sd, n = timing[v]
            base = timing.get((1.0, v[1]), (math.nan, math.nan, 0))[0]
            speed = base / ms if n and math.isfinite(base) and ms > 0 else math.nan
            ips = mean_std([r.metric("eval_images_per_second") for r in rs])
            row += [Cell(f"{ms:.1f}" + (f" ± {sd:.1f}" if math.isfinite(sd) else "") if n else MISSING, ms),
                    Cell(f"{speed:.2f}x" if math.isfinite(speed) else MISSING, speed),
                    Cell(f"{ips[0]:.0f}" if ips[2] else MISSING, ips[0])]
        row.append(ratio_cell(rs))
        row += [pct_cell([r.metric("accuracy") for r in rs if r.spec.task == t], n_expected, floor.get(t, math.nan))
                for t in tasks]
        rows.append(row)
    first = len(lead_names) + 1
    mark_best(rows, list(range(first, first + len(tasks))))
    if group == KEEP:
        mark_best(rows, [2], higher=False)
        mark_best(rows, [3, 4])
    rows.append([C("majority class (floor)")] + [C("") for _ in lead_names[1:]] + [C("")]
                + [C(fmt_pct(floor.get(t, math.nan), math.nan, int(math.isfinite(floor.get(t, math.nan)))),
                     floor.get(t, math.nan)) for t in tasks])
    notes = [_seed_note(n_expected), FLOOR_NOTE]
    if group == KEEP:
        batch = _ordered(str((r.metrics or {}).get("eval_batch_size", "?")) for rs in cells.values() for r in rs)
        notes.append(f"Inference time: mean ms per evaluation batch of {' / '.join(batch) or '?'} images during each "
                     f"run's test evaluation, over all runs of the row (± across runs); speed-up against the 100 % "
                     f"row of the same skip mode. 'adapter' skips only the adapter (the paper's eq. 4); 'later-"
                     f"blocks' also lets skipped tokens bypass the next block (the first block sees every token); "
                     f"'block' routes every block, the first included, from the block's input. Timings from one "
                     f"machine under varying load (see the header) are noisy; compare rows of one bench run only.")
    elif group == GATE_DIM and widths:
        notes.append(f"Gate dimension: gate values per token (width {widths[0]} / {widths[1]}); 0 = no gate.")
    elif group == LAYERS and depth:
        notes.append(f"Gated layers: number of the {depth} blocks with a DynaMer layer (option 'layers'); 0 = "
                     f"that stream has no gate.")
    columns = list(lead_names) + ["Total Params"] + tasks
    section.tables.append(Table(group, table_title, columns, rows, notes))
    return section


def _routing_ok(routing) -> bool:
    """metrics.json 'routing' as DynaMer writes it: {layer: {stream: {"expert_usage": [...], ...}}}."""
    try:
        return bool(routing) and all(isinstance(v[s]["expert_usage"], list) and v[s]["expert_usage"]
                                     for v in routing.values() for s in ("general", "medical"))
    except (AttributeError, KeyError, TypeError):
        return False


def routing_section(bench: Bench, figures_dir: Path) -> Section:
    from medvtab.bench import figures
    section = Section("routing", "DynaMer routing: expert usage and gates per layer")
    dyn = [r for r in bench.finished if r.spec.method == "dynamer" and _routing_ok(r.metrics.get("routing"))]
    main = [r for r in dyn if r.spec.group == MAIN]
    plain = [r for r in main if not r.spec.options] or main or [r for r in dyn if not r.spec.options] or dyn
    if not plain:
        section.paragraphs.append("No finished DynaMer run with routing statistics.")
        return section
    experts = len(next(iter(plain[0].metrics["routing"].values()))["general"]["expert_usage"])
    use = [r for r in plain if all(len(v[s]["expert_usage"]) == experts for v in r.metrics["routing"].values()
                                   for s in ("general", "medical"))]
    layers = sorted({k for r in use for k in r.metrics["routing"]}, key=lambda k: int(k) if k.isdigit() else 1e9)
    usage, gates, kept = {}, {}, {}
    rows = []
    for stream in ("general", "medical"):
        u = np.full((len(layers), experts), math.nan)
        g = np.full((2, len(layers)), math.nan)
        kf = np.full(len(layers), math.nan)
        for i, layer in enumerate(layers):
            stats = [r.metrics["routing"][layer][stream] for r in use if layer in r.metrics["routing"]]
            if stats:
                u[i] = np.mean([s["expert_usage"] for s in stats], axis=0)
                gm, gs, _ = mean_std([_num(s.get("mean_gate")) for s in stats])
                g[:, i] = gm, gs
                kf[i] = mean_std([_num(s.get("kept_fraction")) for s in stats])[0]
        usage[stream], gates[stream], kept[stream] = u, (g[0], g[1]), kf
    for i, layer in enumerate(layers):
        row = [C(layer)]
        for stream in ("general", "medical"):
            u = usage[stream][i]
            gm, gs = gates[stream][0][i], gates[stream][1][i]
            row += [C(" / ".join(f"{x:.2f}" for x in u) if np.isfinite(u).all() else MISSING),
                    C((f"{gm:.3f}" + (f" ± {gs:.3f}" if math.isfinite(gs) else "")) if math.isfinite(gm)
                      else "no gate", gm),
                    C(f"{kept[stream][i]:.2f}" if math.isfinite(kept[stream][i]) else MISSING, kept[stream][i])]
        rows.append(row)
    groups = _ordered(r.spec.group for r in use)
    what = (f"{len(use)} finished DynaMer run{'s' if len(use) > 1 else ''} (group {', '.join(groups)}; tasks "
            f"{', '.join(_ordered(r.spec.task for r in use))})")
    table = Table("routing", "Per-layer routing statistics (test set)",
                  ["Layer", "General: expert usage", "General: mean gate", "General: kept fraction",
                   "Medical: expert usage", "Medical: mean gate", "Medical: kept fraction"], rows,
                  [f"Averaged over {what}. Expert usage: share of the routed tokens each expert (0-"
                   f"{experts - 1}) processed, from metrics.json 'routing'; mean gate: average gate value g in "
                   f"x + g * delta (± across runs); kept fraction: tokens through the adapter."])
    section.tables.append(table)
    path = figures.routing(layers, usage, gates, kept, figures_dir / "routing.png")
    section.figures.append(FigureRef("routing", path, f"Expert usage per layer and stream, mean gate values and kept "
                                                      f"tokens, averaged over {what}."))
    return section


def attention_section(bench: Bench, figures_dir: Path, enabled: bool) -> Section:
    from medvtab.bench import figures
    section = Section("attention", "Where the model looks: attention maps (Figure 3)")
    dyn = [r for r in bench.finished if r.spec.method == "dynamer"]
    if not enabled:
        section.paragraphs.append("Not drawn (--no-attention).")
        return section
    if not dyn:
        section.paragraphs.append("No finished DynaMer run: no attention maps.")
        return section
    tasks = _ordered(r.spec.task for r in bench.runs)
    dyn.sort(key=lambda r: (r.spec.group != MAIN, bool(r.spec.options), r.spec.protocol != "standard",
                            tasks.index(r.spec.task), r.spec.seed))
    run = dyn[0]
    from medvtab.bench.attention import run_attention
    try:
        maps = run_attention(run.dir)
    except (MedvtabError, OSError, KeyError, ValueError, RuntimeError) as err:
        section.paragraphs.append(f"Attention maps not drawn for run {run.run_id}: {str(err).splitlines()[0]}")
        return section
    names = maps.class_names

    def name(i: int) -> str:
        return names[i] if 0 <= i < len(names) else str(i)

    titles = [f"test #{p}: {name(y)}\npredicted: {name(q)}"
              for p, y, q in zip(maps.positions, maps.labels, maps.predictions)]
    cols = {s: f"{s} stream: {figures.short(maps.specs[s], 40)}\n{maps.kinds[s]}" for s in maps.maps}
    path = figures.attention(maps.images, maps.maps, titles, cols, figures_dir / "attention.png")
    shown = "; ".join(f"test image #{p}: class '{name(y)}', predicted '{name(q)}'"
                      for p, y, q in zip(maps.positions, maps.labels, maps.predictions))
    section.paragraphs.append(
        f"Run {run.run_id} (task {maps.task}, seed {run.spec.seed}), rebuilt from its run directory; test "
        f"images of its own test split. Last block (block {maps.block}) of each stream, averaged over heads; "
        f"each map min-max scaled on its own. {shown}.")
    section.figures.append(FigureRef("attention", path, f"Attention of the last block over the test images of "
                                                        f"{maps.task}: left the image, then the general and the "
                                                        f"medical stream."))
    return section


def missing_section(bench: Bench) -> Section:
    missing = [r for r in bench.runs if not r.finished]
    section = Section("missing", "Missing runs")
    failed = [r for r in missing if r.run_id in bench.failures]
    if not missing:
        section.paragraphs.append(f"None: all {len(bench.runs)} runs of the grid have finished.")
    else:
        section.paragraphs.append(
            f"{len(bench.runs) - len(missing)} of {len(bench.runs)} grid runs have finished, {len(failed)} failed "
            f"(recorded in failures/), {len(missing) - len(failed)} not finished (not started, running or "
            f"interrupted). Rerunning the `medvtab bench` command on this directory runs only the missing ones.")
    if bench.staged:
        section.paragraphs.append(f"{len(bench.staged)} staged run director{'ies' if len(bench.staged) > 1 else 'y'} "
                                  f"(running or interrupted): {', '.join(bench.staged)}.")
    if bench.extra_runs:
        section.paragraphs.append(f"{len(bench.extra_runs)} finished run director"
                                  f"{'ies' if len(bench.extra_runs) > 1 else 'y'} not in this grid (ignored): "
                                  f"{', '.join(bench.extra_runs)}.")

    def status(r: Run) -> str:
        record = bench.failures.get(r.run_id)
        if record is None:
            return "started, not finished (run directory without metrics.json)" if r.dir.is_dir() else "not finished"
        when = f" ({record['time']})" if isinstance(record, dict) and record.get("time") else ""
        error = record.get("error", "?") if isinstance(record, dict) else "?"
        return f"failed{when}: {str(error).splitlines()[0] if str(error) else '?'}"

    rows = [[C(r.spec.group), C(r.spec.task), C(r.spec.method), C(r.spec.seed), C(r.spec.protocol),
             C(json.dumps(r.spec.options, sort_keys=True) if r.spec.options else ""), C(r.run_id), C(status(r))]
            for r in missing]
    if rows:
        section.tables.append(Table("missing", "Runs of the grid without results",
                                    ["Group", "Task", "Method", "Seed", "Protocol", "Options", "Run id", "Status"],
                                    rows))
    return section


def other_groups_section(bench: Bench) -> Section | None:
    groups = [g for g in _ordered(r.spec.group for r in bench.runs) if g not in KNOWN_GROUPS]
    if not groups:
        return None
    section = Section("other-groups", "Other groups")
    for g in groups:
        runs = bench.group(g)
        keys = sorted_keys(runs)
        section.tables.append(accuracy_table(f"group-{g}", f"Group {g}", runs, _ordered(r.spec.task for r in runs),
                                             [], keys, row_labels(keys)))
    return section


def notes_section(bench: Bench) -> Section | None:
    counts: dict[str, int] = {}
    for r in bench.finished:
        for w in r.metrics.get("warnings") or []:
            counts[str(w)] = counts.get(str(w), 0) + 1
    if not counts:
        return None
    section = Section("warnings", "Warnings recorded by the runs")
    rows = [[C(w), C(n)] for w, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    section.tables.append(Table("warnings", "Distinct warnings (data checks, leakage)", ["Warning", "Runs"], rows))
    return section


# ----------------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------------
_CODE = re.compile(r"`([^`]*)`")
_NUMERIC = re.compile(r"^[-+]?\d[\d.,]*(X|x| %)?( ± [\d.]+)?( \(n=\d+\))?$")


def _md_escape(text: str, in_table: bool = False) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"([\\*_\[\]])", r"\\\1", text)
    text = text.replace("\n", " ")
    return text.replace("|", "\\|") if in_table else text


def md_inline(text: str, in_table: bool = False) -> str:
    """Plain text with `code` spans -> markdown (everything else escaped)."""
    parts = _CODE.split(text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            fence = "``" if "`" in part else "`"
            out.append(f"{fence}{part.replace('|', chr(92) + '|') if in_table else part}{fence}")
        else:
            out.append(_md_escape(part, in_table))
    return "".join(out)


def html_inline(text: str) -> str:
    """Plain text with `code` spans -> HTML (everything escaped)."""
    parts = _CODE.split(text)
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def render_markdown(report: Report, figure_rel: dict[str, str]) -> str:
    lines = [f"# {md_inline(report.title)}", ""]
    for label, value in report.header:
        lines.append(f"- **{md_inline(label)}**: {md_inline(value)}")
    lines += ["", "Contents: " + " · ".join(md_inline(s.title) for s in report.sections), ""]
    for s in report.sections:
        lines += [f"## {md_inline(s.title)}", ""]
        for p in s.paragraphs:
            lines += [md_inline(p), ""]
        for t in s.tables:
            lines += [f"### {md_inline(t.title)}", ""]
            if t.rows:
                lines.append("| " + " | ".join(md_inline(c, True) for c in t.columns) + " |")
                lines.append("|" + "---|" * len(t.columns))
                for row in t.rows:
                    cells = []
                    for c in row:
                        text = md_inline(c.text, True) + c.mark
                        cells.append(f"**{text}**" if c.best and c.text else text)
                    lines.append("| " + " | ".join(cells) + " |")
                lines.append("")
            for n in t.notes:
                lines += [f"*{md_inline(n)}*", ""]
        for f in s.figures:
            lines += [f"![{md_inline(f.key)}]({figure_rel[f.key]})", "", f"*{md_inline(f.caption)}*", ""]
    return "\n".join(lines).rstrip() + "\n"


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; overflow-wrap: anywhere; }
.scroll { overflow-x: auto; }
table.results { border-collapse: collapse; margin: .6rem 0; font-size: .86rem; }
table.results caption { text-align: left; font-weight: 600; padding: .3rem 0; }
table.results th, table.results td { border: 1px solid #d0d0d0; padding: .25rem .5rem; text-align: left;
                                     white-space: nowrap; }
table.results td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.results td.wrap { white-space: normal; min-width: 22rem; }
table.results thead th { background: #f3f3f5; }
table.results td.best { background: #e8f5e9; }
p.note { font-size: .82rem; color: #555; margin: .2rem 0; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85rem; color: #444; }
code { background: #f3f3f5; padding: 0 .2rem; border-radius: 3px; overflow-wrap: anywhere; }
nav ul { columns: 2; }
"""


def render_html(report: Report, images: dict[str, bytes]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
           "style-src 'unsafe-inline'\">",
           '<link rel="icon" href="data:,">', f"<title>{e(report.title)}</title>", f"<style>{CSS}</style>",
           "</head>", "<body>", f"<h1>{html_inline(report.title)}</h1>", '<dl class="meta">']
    for label, value in report.header:
        out.append(f"<dt>{html_inline(label)}</dt><dd>{html_inline(value)}</dd>")
    out += ["</dl>", "<nav><ul>"]
    out += [f'<li><a href="#{e(s.key)}">{html_inline(s.title)}</a></li>' for s in report.sections]
    out.append("</ul></nav>")
    for s in report.sections:
        out.append(f'<section id="{e(s.key)}">')
        out.append(f"<h2>{html_inline(s.title)}</h2>")
        out += [f"<p>{html_inline(p)}</p>" for p in s.paragraphs]
        for t in s.tables:
            out.append('<div class="scroll">')
            out.append(f'<table class="results" id="{e(t.key)}"><caption>{html_inline(t.title)}</caption>')
            out.append("<thead><tr>" + "".join(f'<th scope="col">{e(c)}</th>' for c in t.columns) + "</tr></thead>")
            out.append("<tbody>")
            for row in t.rows:
                tds = []
                for c in row:
                    text = e(c.text) + e(c.mark)
                    classes = " ".join(k for k, on in (("num", _NUMERIC.match(c.text) or c.text == MISSING),
                                                       ("best", c.best and c.text), ("wrap", len(c.text) > 48))
                                       if on)
                    attr = f' class="{classes}"' if classes else ""
                    body = f"<strong>{text}</strong>" if c.best and c.text else text
                    tds.append(f"<td{attr}>{body}</td>")
                out.append("<tr>" + "".join(tds) + "</tr>")
            out.append("</tbody></table></div>")
            out += [f'<p class="note">{html_inline(n)}</p>' for n in t.notes]
        for f in s.figures:
            data = base64.b64encode(images[f.key]).decode("ascii")
            out.append(f'<figure id="figure-{e(f.key)}"><img src="data:image/png;base64,{data}" '
                       f'alt="{e(f.caption)}"><figcaption>{html_inline(f.caption)}</figcaption></figure>')
        out.append("</section>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------------
# the whole report
# ----------------------------------------------------------------------------------------------------------
def build_report(bench: Bench, figures_dir: Path, *, out: Path | None = None, attention: bool = True) -> Report:
    sections = [tasks_section(bench), main_section(bench, figures_dir), fewshot_section(bench, figures_dir),
                ood_section(bench)]
    sections += [ablation_section(bench, g) for g in (GATES, GATE_DIM, LAYERS, KEEP)]
    sections += [routing_section(bench, figures_dir), attention_section(bench, figures_dir, attention)]
    sections += [s for s in (other_groups_section(bench), missing_section(bench), notes_section(bench)) if s]
    title = f"medvtab bench report: {bench.info.get('suite', bench.root.name)}"
    return Report(title, header(bench, out), sections)


def write_text(path: Path, text: str) -> None:
    """Atomically, readable by all (a report is meant to be shared or served)."""
    def write(tmp):
        Path(tmp).write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o644)
    atomic_write(Path(path), write)


def write_report(root: Path, out: Path | None = None, *, attention: bool = True) -> Report:
    """Write ``out`` (default ``root/report.html``), the markdown beside it (``.md``) and the figures in a
    ``figures/`` folder beside it; every file atomically. Returns the report (tables, figure paths)."""
    bench = load_bench(root)
    html_path = Path(out) if out is not None else Path(root) / "report.html"
    if html_path.exists() and html_path.is_dir():
        raise MedvtabError(f"{html_path}: is a directory; --out names the HTML file to write")
    md_path = html_path.with_suffix(".md")
    figures_dir = html_path.parent / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(bench, figures_dir, out=html_path, attention=attention)
    made = report.figures()
    for name in FIGURE_NAMES:  # figures of an earlier report that this one no longer draws
        stale = figures_dir / name
        if stale.exists() and all(f.path.name != name for f in made.values()):
            stale.unlink()
    images = {k: f.path.read_bytes() for k, f in made.items()}
    rel = {k: f"{figures_dir.name}/{f.path.name}" for k, f in made.items()}
    markdown, page = render_markdown(report, rel), render_html(report, images)
    write_text(md_path, markdown)
    write_text(html_path, page)
    report.html_path, report.md_path = html_path, md_path
    return report
