"""The main results (the papers' Tables 1-3): accuracy per modality, balanced accuracy and AUROC, DynaMer against
each baseline (paired tests), and accuracy against trainable parameters (Figure 1a)."""
from __future__ import annotations

import math
from pathlib import Path

from medvtab.bench.report import figures
from medvtab.bench.report.floor import floor_notes
from medvtab.bench.report.load import Bench, Run
from medvtab.bench.report.predictions import (ENSEMBLE_LABEL, Ensemble, ensemble_cell, main_predictions,
                                              validation_ensembles)
from medvtab.bench.report.stats import ALPHA, MIN_TTEST, MIN_WILCOXON, holm, mean_std, paired_test, verdict
from medvtab.bench.report.tables import (MISSING, C, FigureRef, Section, Table, accuracy_table, by_row_task,
                                         expected_seeds, floors, fmt_pct, group_section, mark_best, modality, ordered,
                                         pct_cell, row_key, row_labels, seed_note, sorted_keys)

MAIN = "main"
MODALITY_TABLES = (("colour", "Colour images (the papers' Table 1)"),
                   ("x-ray", "X-ray images (Table 2)"),
                   ("other", "OCT, CT, MRI, ultrasound and other modalities (Table 3)"))


def main_section(bench: Bench, figures_dir: Path) -> Section:
    runs, section = group_section(bench, MAIN, "Main results (Tables 1-3)")
    if not runs:
        return section
    tasks = ordered(r.spec.task for r in runs)
    keys = sorted_keys(runs)
    labels = row_labels(keys)
    section.paragraphs.append(
        "Test accuracy per task and method, one table per modality as in the papers (colour; X-ray; OCT, CT, MRI "
        "and the rest; modality from the task registry), with Total Params = (one backbone + everything the method "
        "adds) / one backbone; then balanced accuracy and AUROC, and a paired test of DynaMer against each "
        "baseline. The ensemble row is the validation-chosen ensemble of the next section; cells at or below the "
        "majority-class floor are explained under their table.")
    ensembles = validation_ensembles(main_predictions(runs), keys)
    n_expected, floor = expected_seeds(runs), floors([r for r in runs if r.finished])
    for mod, title in MODALITY_TABLES:
        these = [t for t in tasks if modality(t) == mod]
        if these:
            table = accuracy_table(f"main-{mod}", title, runs, these, keys, labels)
            if ensembles:  # before the floor row
                table.rows.insert(-1, [C(ENSEMBLE_LABEL), C("")] + [
                    ensemble_cell(ensembles, t, "accuracy", n_expected, floor.get(t, math.nan)) for t in these])
            table.notes += floor_notes(runs, these, keys, labels, bench.tuning)
            section.tables.append(table)
    section.tables.append(balanced_auroc_table(runs, tasks, keys, labels, ensembles))
    section.tables.append(paired_table(runs, keys, labels))
    fig = params_figure(runs, keys, labels, tasks, figures_dir)
    if fig:
        section.figures.append(fig)
    return section


def balanced_auroc_table(runs: list[Run], tasks: list[str], keys: list[tuple], labels: dict,
                         ensembles: list[Ensemble]) -> Table:
    """Balanced accuracy and AUROC: one table, two columns per task, the ensemble's row, chance as the last row."""
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
    if ensembles:
        rows.append([C(ENSEMBLE_LABEL)] + [ensemble_cell(ensembles, t, m, n_expected)
                                           for t in tasks for m in ("balanced_accuracy", "auroc")])
    chance = [C("chance")]
    for t in tasks:
        k_classes = next((r.config.get("num_classes") for r in runs if r.finished and r.spec.task == t), None)
        bal = 1.0 / k_classes if isinstance(k_classes, int) and k_classes > 0 else math.nan
        chance += [C(fmt_pct(bal, math.nan, int(math.isfinite(bal))), bal), C(fmt_pct(0.5, math.nan, 1), 0.5)]
    rows.append(chance)
    columns = ["Method"] + [f"{t} {m}" for t in tasks for m in ("bal. acc.", "AUROC")]
    return Table("main-balanced-auroc", "Balanced accuracy and AUROC", columns, rows,
                 [seed_note(n_expected, "balanced accuracy and macro one-vs-rest AUROC"),
                  "Chance: balanced accuracy 1/K for K classes (any constant answer), AUROC 50."])


def _dynamer_key(keys: list[tuple]) -> tuple | None:
    dyn = [k for k in keys if k[0] == "dynamer"]
    plain = [k for k in dyn if k[1] == "{}" and k[2] == "{}"]
    return (plain or dyn or [None])[0]


def paired_table(runs: list[Run], keys: list[tuple], labels: dict) -> Table:
    dyn = _dynamer_key(keys)
    title = ("DynaMer against each baseline (paired over tasks and seeds; Wilcoxon signed-rank or paired t-test, "
             "Holm-corrected)")
    columns = ["Baseline", "Pairs (task × seed)", "DynaMer wins / ties / losses", "Mean difference (pp)",
               "Test", "Statistic", "p", "Holm p", "Verdict"]
    if dyn is None:
        return Table("paired-test", title, columns, [], ["No DynaMer runs in group 'main': nothing to test."])
    acc = {(row_key(r), r.spec.task, r.spec.seed): r.metric("accuracy") for r in runs if r.finished}
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
