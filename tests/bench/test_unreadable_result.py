"""One corrupt metrics.json in a store: `report` lists that run as failed and renders the rest; `bench` counts the
run as not finished and redoes it, keeping the bad directory aside in DIR/unreadable/."""
from __future__ import annotations

import json

from medvtab.bench.grid import expand_grid, parse_grid
from medvtab.bench.report.write import write_report
from medvtab.bench.runner import UNREADABLE, run_grid
from medvtab.bench.store import run_dir

from .test_runner import Quiet

GRID = {"name": "t", "tasks": ["breastmnist"], "methods": ["linear", "vpt-shallow"], "train_size": 32,
        "train": {"epochs": 1, "batch_size": 32}}


def test_a_corrupt_result_is_a_failed_run_in_the_report_and_redone_by_bench(tmp_path):
    specs = expand_grid(parse_grid(GRID))
    run_grid(tmp_path, specs, suite="t", console=Quiet())
    bad = run_dir(tmp_path, specs[0]) / "metrics.json"
    good = json.loads(bad.read_text())
    bad.write_text('{"accuracy": 0.7')  # torn

    report = write_report(tmp_path, attention=False)
    missing = " ".join(" ".join(p) for s in report.sections if s.key == "missing" for p in [s.paragraphs] + [
        [c.text for row in t.rows for c in row] for t in s.tables])
    assert specs[0].run_id() in missing and "unreadable" in missing, missing
    assert specs[1].run_id() not in missing

    console = Quiet()
    summary = run_grid(tmp_path, specs, suite="t", console=console)
    assert summary.finished == [specs[0].run_id()] and summary.skipped == [specs[1].run_id()]
    assert json.loads(bad.read_text())["accuracy"] == good["accuracy"]  # the same run again, on CPU
    kept = list((tmp_path / UNREADABLE).iterdir())
    assert len(kept) == 1 and (kept[0] / "metrics.json").read_text() == '{"accuracy": 0.7'
    assert "its metrics.json was unreadable" in console.file.getvalue()
