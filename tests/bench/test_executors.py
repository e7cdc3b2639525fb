"""The local executor: a pool of worker processes (spawned, one torch thread each) writes the same results store
as the serial executor (same run_ids, same metrics but for timings); a job that raises in a worker comes back as
its exception; a worker that dies is a failed run, recorded, and the grid goes on."""
from __future__ import annotations

import io
import json
import os
import signal

from rich.console import Console

from medvtab.bench.executors import WorkerDied, map_jobs
from medvtab.bench.grid import expand_grid, parse_grid
from medvtab.bench.report.load import load_bench
from medvtab.bench.runner import TIMING_KEYS, read_failures, run_grid

GRID = {"name": "local-test", "tasks": ["breastmnist"], "methods": ["linear", "vpt-shallow", "lora"],
        "train": {"epochs": 1, "batch_size": 32}, "train_size": 48}


def quiet_console():
    return Console(file=io.StringIO(), width=300, force_terminal=False, soft_wrap=True)


def comparable(root):
    return {run.run_id: json.dumps({k: v for k, v in run.metrics.items() if k not in TIMING_KEYS}, sort_keys=True)
            for run in load_bench(root).finished}


def test_local_pool_writes_the_same_store_as_serial(tmp_path):
    specs = expand_grid(parse_grid(GRID))
    console = quiet_console()
    summary = run_grid(tmp_path / "local", specs, suite="t", executor="local", workers=2, console=console)
    assert len(summary.finished) == 3 and not summary.failed, console.file.getvalue()
    run_grid(tmp_path / "serial", specs, suite="t", executor="serial", console=quiet_console())
    local, serial = comparable(tmp_path / "local"), comparable(tmp_path / "serial")
    assert sorted(local) == sorted(s.run_id() for s in specs)
    assert local == serial
    again = run_grid(tmp_path / "local", specs, suite="t", executor="local", workers=2, console=quiet_console())
    assert len(again.skipped) == 3 and not again.finished


def divide(a, b):
    return a / b


def die(code):
    os.kill(os.getpid(), signal.SIGKILL)


def test_exceptions_and_dead_workers_come_back_as_results():
    results = dict(map_jobs(divide, [(1, 2), (1, 0), (3, 1)], executor="local", workers=2))
    assert results[(1, 2)] == 0.5 and results[(3, 1)] == 3.0
    assert isinstance(results[(1, 0)], ZeroDivisionError)
    died = dict(map_jobs(die, [(1,), (2,)], executor="local", workers=2))
    assert all(isinstance(r, WorkerDied) for r in died.values())


def test_a_dead_worker_is_a_recorded_failure(tmp_path, monkeypatch):
    import medvtab.bench.runner as runner
    specs = expand_grid(parse_grid({**GRID, "methods": ["linear"]}))
    monkeypatch.setattr(runner, "map_jobs", lambda fn, jobs, **kw: ((args, WorkerDied("worker died")) for args in jobs))
    summary = run_grid(tmp_path, specs, suite="t", executor="local", workers=2, console=quiet_console())
    assert summary.failed == [specs[0].run_id()]
    assert read_failures(tmp_path)[specs[0].run_id()]["error"] == "worker died"
