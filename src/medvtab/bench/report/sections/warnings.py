"""The distinct warnings the finished runs recorded (data checks, leakage), with how many runs gave each."""
from __future__ import annotations

from medvtab.bench.report.load import Bench
from medvtab.bench.report.tables import C, Section, Table


def warnings_section(bench: Bench) -> Section | None:
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
