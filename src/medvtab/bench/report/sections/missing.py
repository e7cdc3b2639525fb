"""The runs of the grid without results: failed (with their error), started or never started; and run
directories the grid does not list."""
from __future__ import annotations

import json

from medvtab.bench.report.load import Bench, Run
from medvtab.bench.report.tables import C, Section, Table


def _status(bench: Bench, r: Run) -> str:
    record = bench.failures.get(r.run_id)
    if record is None:
        return "started, not finished (run directory without metrics.json)" if r.dir.is_dir() else "not finished"
    when = f" ({record['time']})" if isinstance(record, dict) and record.get("time") else ""
    error = record.get("error", "?") if isinstance(record, dict) else "?"
    return f"failed{when}: {str(error).splitlines()[0] if str(error) else '?'}"


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
    rows = [[C(r.spec.group), C(r.spec.task), C(r.spec.method), C(r.spec.seed), C(r.spec.protocol),
             C(json.dumps(r.spec.options, sort_keys=True) if r.spec.options else ""), C(r.run_id),
             C(_status(bench, r))] for r in missing]
    if rows:
        section.tables.append(Table("missing", "Runs of the grid without results",
                                    ["Group", "Task", "Method", "Seed", "Protocol", "Options", "Run id", "Status"],
                                    rows))
    return section
