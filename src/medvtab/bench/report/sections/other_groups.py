"""Groups of the grid that no other section describes: one accuracy table each."""
from __future__ import annotations

from medvtab.bench.report.load import Bench
from medvtab.bench.report.sections.ablations import ABLATIONS
from medvtab.bench.report.sections.fewshot import FEWSHOT
from medvtab.bench.report.sections.main import MAIN
from medvtab.bench.report.sections.ood import OOD
from medvtab.bench.report.sections.scaling import PREFIX as SCALING
from medvtab.bench.report.tables import Section, accuracy_table, ordered, row_labels, sorted_keys

KNOWN_GROUPS = (MAIN, OOD, FEWSHOT) + tuple(a.group for a in ABLATIONS)


def other_groups_section(bench: Bench) -> Section | None:
    groups = [g for g in ordered(r.spec.group for r in bench.runs)
              if g not in KNOWN_GROUPS and not g.startswith(SCALING)]
    if not groups:
        return None
    section = Section("other-groups", "Other groups")
    for g in groups:
        runs = bench.group(g)
        keys = sorted_keys(runs)
        section.tables.append(accuracy_table(f"group-{g}", f"Group {g}", runs, ordered(r.spec.task for r in runs),
                                             keys, row_labels(keys)))
    return section
