"""Scaling of tunable parameters (the Med-VTAB paper's Table 5 and its open question 1: does accuracy grow with
Total Params, and does that differ between modalities?), from every grid group named ``scaling-*`` (the
``mini-scaling`` suite's, or a grid file's): a group sweeps the size option of one method (a *family*: prompt
count, adapter width, expert width), and each of its points is a row of runs over seeds.

Per modality (from the task registry): a figure with a panel per task, test accuracy (mean, std over seeds)
against Total Params on a log axis, one line per family, the validation plateau ringed; the points' table; and
per (family, modality) the least-squares slope of test accuracy against log10(Total Params) over all (point,
seed) pairs, each task with its own intercept, with a bootstrap 95 % interval that resamples seeds within points
(:func:`medvtab.bench.report.stats.slope_interval`), and a sentence saying whether more parameters help."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medvtab.bench.report import figures
from medvtab.bench.report.load import Bench, Run
from medvtab.bench.report.predictions import run_predictions
from medvtab.bench.report.stats import BOOTSTRAP_REPS, CONFIDENCE, mean_std, slope_interval, trend_verdict
from medvtab.bench.report.tables import (FLOOR_NOTE, MISSING, C, FigureRef, Section, Table, floors, fmt_pct, ordered,
                                         pct_cell)
from medvtab.data.catalogue import get_task
from medvtab.engine.metrics import selection_score
from medvtab.errors import MedvtabError

PREFIX = "scaling-"
TITLE = "Scaling of tunable parameters"


@dataclass
class Point:
    """One size of one family on one task: its runs over seeds."""
    size: str  # the swept option(s) and value(s), e.g. "num_prompts=50"
    runs: list[Run] = field(default_factory=list)

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.finished]

    @property
    def ratio(self) -> float:
        return mean_std([r.metric("params_ratio") for r in self.runs])[0]

    def validation(self) -> tuple[float, float, int]:
        """Mean, std and count over seeds of the final runs' validation selection score (their best epoch's
        stored validation predictions: what early stopping and tuning maximise)."""
        scores = []
        for r in self.finished:
            p = run_predictions(r)
            if p is not None and "val_probs" in p:
                scores.append(selection_score(p["val_labels"], p["val_probs"]))
        return mean_std(scores)


def task_modality(task: str) -> str:
    """The task registry's modality (e.g. 'x-ray', 'ultrasound'); 'other' for tasks it does not list."""
    try:
        return get_task(task).modality
    except (MedvtabError, KeyError, ValueError):
        return "other"


def _families(runs: list[Run]) -> dict[str, dict[str, dict[str, Point]]]:
    """family label -> task -> size -> point; a family is a (group, method), labelled by the method and the
    options whose values differ between its runs (tuned ones excluded: they differ by task and point)."""
    out: dict[str, dict[str, dict[str, Point]]] = {}
    for group, method in ordered((r.spec.group, r.spec.method) for r in runs):
        members = [r for r in runs if r.spec.group == group and r.spec.method == method]
        configs = [r.method_config() for r in members]
        axis = [k for k in ordered(k for r in members for k in r.spec.options)
                if k not in members[0].tuned and len({repr(c.get(k)) for c in configs}) > 1]
        label = f"{method} ({', '.join(axis)})" if axis else method
        if any(f == label for f in out):
            label = f"{label} [{group}]"
        family = out.setdefault(label, {})
        for r, cfg in zip(members, configs):
            size = ", ".join(f"{k}={cfg.get(k)}" for k in axis) or "default"
            family.setdefault(r.spec.task, {}).setdefault(size, Point(size)).runs.append(r)
    return out


def _sorted_points(points: dict[str, Point]) -> list[Point]:
    return sorted(points.values(), key=lambda p: (not math.isfinite(p.ratio), p.ratio, p.size))


def plateau(points: list[Point]) -> Point | None:
    """The point where validation accuracy stops improving: the highest mean validation score over seeds, the
    smallest such point on a tie (a larger one did not improve on it)."""
    best, best_score = None, -math.inf
    for p in points:
        score = p.validation()[0]
        if math.isfinite(score) and score > best_score + 1e-12:
            best, best_score = p, score
    return best


@dataclass
class Trend:
    slope: float
    low: float
    high: float
    span: float  # log10 of the sweep's largest over its smallest Total Params
    n: int


def trend(per_task: dict[str, list[Point]]) -> Trend:
    params, values, points, strata = [], [], [], []
    for t, pts in enumerate(per_task.values()):
        for i, p in enumerate(pts):
            for r in p.finished:
                acc, ratio = r.metric("accuracy"), r.metric("params_ratio")
                if math.isfinite(acc) and math.isfinite(ratio):
                    params.append(ratio)
                    values.append(100 * acc)
                    points.append(f"{t}/{i}")
                    strata.append(t)
    if not params:
        return Trend(math.nan, math.nan, math.nan, math.nan, 0)
    slope, low, high = slope_interval(params, values, points, strata)
    return Trend(slope, low, high, float(np.log10(max(params) / min(params))), len(params))


def _signed(x: float) -> str:
    return f"{x:+.2f}" if math.isfinite(x) else MISSING


def _interval(t: Trend, scale: float = 1.0) -> str:
    if not (math.isfinite(t.low) and math.isfinite(t.high)):
        return MISSING
    return f"[{_signed(scale * t.low)}, {_signed(scale * t.high)}]"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "other"


def _point_rows(mod: str, task: str, family: str, pts: list[Point], best: Point | None, n_seeds: int,
                floor: float) -> tuple[list[list], list[tuple[float, float, float]]]:
    """The points' table rows of one (family, task), and its line in the figure: (ratio, mean, std) per point."""
    rows, line = [], []
    for p in pts:
        acc = [r.metric("accuracy") for r in p.finished]
        trainable = mean_std([r.metric("trainable_params") for r in p.finished])[0]
        rows.append([C(mod), C(task), C(family), C(p.size),
                     C(f"{trainable:,.0f}" if math.isfinite(trainable) else MISSING, trainable),
                     C(f"{p.ratio:.3f}X" if math.isfinite(p.ratio) else MISSING, p.ratio),
                     C(fmt_pct(*p.validation())), pct_cell(acc, n_seeds, floor), C("plateau" if p is best else "")])
        mean, std, n = mean_std(acc)
        if n and math.isfinite(p.ratio):
            line.append((p.ratio, mean, std))
    return rows, line


def scaling_groups(bench: Bench) -> list[str]:
    return [g for g in ordered(r.spec.group for r in bench.runs) if g.startswith(PREFIX)]


def scaling_section(bench: Bench, figures_dir: Path) -> Section | None:
    groups = scaling_groups(bench)
    if not groups:
        return None
    runs = [r for r in bench.runs if r.spec.group in groups]
    families = _families(runs)
    tasks = ordered(r.spec.task for r in runs)
    modalities = {m: [t for t in tasks if task_modality(t) == m] for m in ordered(task_modality(t) for t in tasks)}
    floor = floors([r for r in runs if r.finished])
    n_seeds = max((len(p.runs) for fam in families.values() for pts in fam.values() for p in pts.values()), default=0)
    section = Section("scaling", TITLE)
    section.paragraphs.append(
        f"Test accuracy against Total Params (one backbone + everything the method adds, over one backbone) as each "
        f"family's size grows (grid groups {', '.join(f'`{g}`' for g in groups)}), one figure per modality. Every "
        f"point was tuned on validation on its own; the ring marks where validation accuracy stops improving (the "
        f"point with the highest mean validation accuracy over seeds; a tie goes to the smaller). The slope is the "
        f"least-squares fit of test accuracy (percentage points) against log10(Total Params) over every (point, "
        f"seed), each task with its own intercept; its {100 * CONFIDENCE:.0f} % interval is a bootstrap that "
        f"redraws the seeds within each point (fixed RNG seed). 'Change' is the fitted change across the sweep's "
        f"range of Total Params.")
    point_rows, slope_rows = [], []
    for mod, mod_tasks in modalities.items():
        panels: dict[str, dict[str, list]] = {}
        plateaus: dict[str, dict[str, float]] = {}
        for family, per_task in families.items():
            ordered_points = {t: _sorted_points(per_task[t]) for t in mod_tasks if t in per_task}
            if not ordered_points:
                continue
            best_at = {t: plateau(pts) for t, pts in ordered_points.items()}
            for t, pts in ordered_points.items():
                if best_at[t] is not None:
                    plateaus.setdefault(t, {})[family] = best_at[t].ratio
                rows, line = _point_rows(mod, t, family, pts, best_at[t], n_seeds, floor.get(t, math.nan))
                point_rows += rows
                if line:
                    panels.setdefault(t, {})[family] = line
            tr = trend(ordered_points)
            verdict = trend_verdict(tr.slope, tr.low, tr.high)
            at = " / ".join(f"{b.ratio:.3f}X ({b.size})" if b is not None else MISSING for b in best_at.values())
            slope_rows.append([C(mod), C(family), C(", ".join(ordered_points)), C(str(tr.n)),
                               C(_signed(tr.slope), tr.slope), C(_interval(tr)),
                               C(_signed(tr.slope * tr.span), tr.slope * tr.span), C(_interval(tr, tr.span)),
                               C(at), C(verdict)])
            section.paragraphs.append(
                f"{mod}, {family}: {verdict}" + (f" (slope {_signed(tr.slope)} points per 10x Total Params, "
                                                  f"{100 * CONFIDENCE:.0f} % interval {_interval(tr)}; "
                                                  f"{_signed(tr.slope * tr.span)} points across the sweep)."
                                                  if math.isfinite(tr.slope) else "."))
        if panels:
            path = figures.scaling(panels, plateaus, floor, mod, figures_dir / f"scaling_{_slug(mod)}.png")
            section.figures.append(FigureRef(f"scaling-{_slug(mod)}", path,
                                             f"{mod}: test accuracy (mean ± std over seeds) against Total Params, "
                                             f"one line per family; ring: validation plateau; dashed: majority "
                                             f"class."))
    section.tables.append(Table("scaling-slopes", "Trend of test accuracy with Total Params",
                                ["Modality", "Family", "Tasks", "(point, seed) pairs",
                                 "Slope (points per 10x Total Params)", "Slope interval",
                                 "Change across the sweep (points)", "Change interval",
                                 "Validation plateau at", "Verdict"], slope_rows,
                                [f"Slope: least squares of test accuracy (%) on log10(Total Params), a task's own "
                                 f"intercept; intervals: {100 * CONFIDENCE:.0f} % percentile bootstrap over seeds "
                                 f"within points ({BOOTSTRAP_REPS:,} replicates, fixed seed). With few seeds they "
                                 f"are narrow (a bootstrap of 2-3 values understates their spread): read a verdict "
                                 f"beside the points' standard deviations."]))
    section.tables.append(Table("scaling-points", "Sweep points", [
        "Modality", "Task", "Family", "Size", "Trainable", "Total Params", "Validation accuracy", "Test accuracy",
        "Validation plateau"], point_rows, [
        f"Accuracy in %, mean ± sample standard deviation over {n_seeds} seed{'s' if n_seeds != 1 else ''} ((n=k) "
        f"where fewer finished); validation: the final runs' best epoch, the one early stopping kept. {FLOOR_NOTE}"]))
    return section

