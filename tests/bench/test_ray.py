"""The Ray executor: a private local Ray instance (2 CPUs, no dashboard) with 2 workers writes the same results
store as the serial executor (same run_ids, same metrics but for timings), and a missing Ray is a one-line
error naming the extra to install."""
from __future__ import annotations

import json
import sys

import pytest

from medvtab.bench.grid import expand_grid, parse_grid
from medvtab.bench.runner import TIMING_KEYS, run_grid
from medvtab.bench.report.load import load_bench
from medvtab.bench.store import read_grid
from medvtab.errors import MedvtabError

GRID = {"name": "ray-test", "tasks": ["breastmnist"], "methods": ["linear", "vpt-shallow"],
        "train": {"epochs": 1, "batch_size": 32}, "train_size": 48}


def quiet_console():
    import io

    from rich.console import Console
    return Console(file=io.StringIO(), width=300, force_terminal=False, soft_wrap=True)


def comparable(root):
    out = {}
    for run in load_bench(root).finished:
        metrics = {k: v for k, v in run.metrics.items() if k not in TIMING_KEYS}
        out[run.run_id] = (json.dumps(metrics, sort_keys=True), run.config["bench"])
    return out


def test_missing_ray_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    specs = expand_grid(parse_grid(GRID))
    with pytest.raises(MedvtabError, match=r"^option '--executor ray' needs ray: install medvtab\[ray\]$"):
        run_grid(tmp_path / "store", specs, suite="t", executor="ray", console=quiet_console())
    assert not (tmp_path / "store").exists()


def test_ray_executor_writes_the_same_store_as_serial(tmp_path):
    pytest.importorskip("ray")
    specs = expand_grid(parse_grid(GRID))
    serial, parallel = tmp_path / "serial", tmp_path / "ray"
    console = quiet_console()
    summary = run_grid(parallel, specs, suite="t", executor="ray", workers=2, console=console)
    assert len(summary.finished) == 2 and not summary.failed, console.file.getvalue()
    assert run_grid(serial, specs, suite="t", threads=1, console=quiet_console()).finished
    assert read_grid(parallel)[1] == read_grid(serial)[1] == specs
    a, b = comparable(serial), comparable(parallel)
    assert sorted(a) == sorted(b) == sorted(s.run_id() for s in specs)
    assert a == b
    # resumable through Ray too: nothing left to run
    again = run_grid(parallel, specs, suite="t", executor="ray", workers=2, console=quiet_console())
    assert len(again.skipped) == 2 and not again.finished
