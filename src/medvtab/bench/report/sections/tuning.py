"""How every (task, method) was tuned on validation (``DIR/tuning.json``, :mod:`medvtab.bench.tune`): the search
budget, the chosen values with their validation score and trial counts, and validation score against the
learning rate (or the space's first hyper-parameter)."""
from __future__ import annotations

import math
from pathlib import Path

from medvtab.bench.report import figures
from medvtab.bench.report.load import Bench, number
from medvtab.bench.report.tables import MISSING, C, FigureRef, Section, Table, ordered
from medvtab.bench.tune import budget_sentence


def _label(study: dict) -> str:
    options = "".join(f" {k}={v}" for k, v in (study.get("options") or {}).items())
    return f"{study['method']}{options}"


def _task(study: dict) -> str:
    task = str(study["task"])
    return task if len(task) <= 32 else Path(task).name


def tuning_section(bench: Bench, figures_dir: Path) -> Section:
    section = Section("tuning", "Tuning on validation")
    if bench.tuning is None:
        section.paragraphs.append("Not tuned: methods ran at their defaults.")
        return section
    studies = bench.tuning.get("studies") or []
    config = bench.tuning.get("tune") or {}
    space = config.get("space") or {}
    budgets = ordered(budget_sentence(s.get("budget") or {}) for s in studies if s.get("budget"))
    same = "the same for all" if len(budgets) == 1 else "per task (the tasks' train sets differ)"
    section.paragraphs.append(
        f"Every method: {'; '.join(budgets) or 'no trial finished'}, {same}; selection on validation only "
        f"(the best epoch's validation score of each trial), the test split read once per final run. Space: "
        + ", ".join(f"`{k}` in {{{', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in vals)}}}"
                    for k, vals in space.items())
        + f"; trials in that order, seed {config.get('seed', 0)}, pruner {config.get('pruner', 'none')}. The "
          f"classifier head learns `head_lr_scale` (10) times faster than the chosen learning rate, for every "
          f"method. Final runs use the chosen values at the grid's seeds; studies: `{bench.tuning.get('storage')}`.")
    keys = list(space)
    rows = []
    for s in studies:
        chosen = s.get("chosen") or {}
        states = [t.get("state") for t in s.get("trials") or []]
        rows.append([C(_task(s)), C(_label(s)),
                     *(C(f"{chosen[k]:g}" if isinstance(chosen.get(k), float) else str(chosen.get(k, MISSING)))
                       for k in keys),
                     C(f"{100 * number(s.get('best_val_score')):.1f}" if s.get("best_val_score") is not None
                       else MISSING, number(s.get("best_val_score"))),
                     C(f"{states.count('COMPLETE')} / {states.count('PRUNED')} / {states.count('FAIL')}")])
    section.tables.append(Table(
        "tuning", "Chosen values per (task, method)", ["Task", "Method", *keys, "Best val. score (%)",
                                                      "Trials complete / pruned / failed"], rows,
        [(f"Validation score: accuracy (mean AUROC for multi-label tasks) at the trial's best epoch. "
          f"{MISSING}: no trial completed (the runs kept the method's defaults).")]))
    x = "lr" if "lr" in space else (keys[0] if keys else None)
    curves: dict[str, dict[str, list]] = {}
    for s in studies:
        for t in s.get("trials") or []:
            value, score = (t.get("values") or {}).get(x), number(t.get("val_score"))
            if t.get("state") == "COMPLETE" and isinstance(value, (int, float)) and math.isfinite(score):
                curves.setdefault(_task(s), {}).setdefault(_label(s), []).append((float(value), score, 0.0))
    if curves:
        path = figures.data_efficiency(curves, {}, x, figures_dir / "sensitivity.png",
                                       ylabel="validation score (%)")
        section.figures.append(FigureRef(
            "sensitivity", path, f"Validation score of each completed trial against `{x}`, one line per method, "
                                 f"a panel per task (pruned trials left out: they stopped early)."))
    return section
