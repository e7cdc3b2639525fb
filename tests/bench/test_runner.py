"""Running grids into a results store, on real bundled data with tiny budgets: resumable (nothing finished is
recomputed), failures recorded and retried, claims and the rename race between workers, and a kill test:
``medvtab bench`` SIGKILLed at random points, then rerun to completion, leaves exactly the grid's runs."""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from safetensors.torch import load_file

import medvtab.engine.run
from medvtab.bench import runner
from medvtab.bench.grid import expand_grid, parse_grid
from medvtab.bench.runner import FAILURES, LOCKS, claim, run_grid, run_one
from medvtab.bench.report.load import load_bench
from medvtab.bench.store import RUNS, RunSpec, is_finished, read_grid, run_dir

RUN_FILES = ["adapter.safetensors", "config.json", "log.csv", "metrics.json", "predictions.npz", "splits.json"]
TINY = {"train": {"epochs": 1, "batch_size": 32}, "train_size": 32}


class Quiet(Console):
    """A console that keeps its lines (``.lines``) instead of printing them."""

    def __init__(self):
        super().__init__(file=io.StringIO(), width=300, force_terminal=False, highlight=False, soft_wrap=True)

    @property
    def lines(self) -> list[str]:
        return self.file.getvalue().splitlines()


def tiny_grid(methods=("linear", "partial"), tasks=("breastmnist",), **extra) -> list[RunSpec]:
    return expand_grid(parse_grid({"name": "t", "tasks": list(tasks), "methods": list(methods), **TINY, **extra}))


def assert_complete_store(root: Path, specs: list[RunSpec]) -> None:
    """Every spec has exactly one complete run directory with valid files; nothing else is left in runs/."""
    runs = root / RUNS
    assert sorted(p.name for p in runs.iterdir()) == sorted({s.run_id() for s in specs})  # no .partial leftovers
    for spec in specs:
        d = run_dir(root, spec)
        assert sorted(p.name for p in d.iterdir()) == RUN_FILES
        for name in ("config.json", "metrics.json", "splits.json"):
            json.loads((d / name).read_text())
        assert json.loads((d / "config.json").read_text())["bench"]["task"] == spec.task
        assert RunSpec(**json.loads((d / "config.json").read_text())["bench"]).run_id() == spec.run_id()
        load_file(str(d / "adapter.safetensors"))
        assert (d / "log.csv").read_text().startswith("epoch,")
    if (root / "bench.json").exists():
        assert all(r.metrics is not None for r in load_bench(root).runs)
    assert not list((root / FAILURES).glob("*")) if (root / FAILURES).exists() else True
    assert not list((root / LOCKS).glob("*.lock")) if (root / LOCKS).exists() else True


def test_grid_runs_once_and_resumes_without_recomputing(tmp_path, monkeypatch):
    root = tmp_path / "store"
    specs = tiny_grid()
    summary = run_grid(root, specs, suite="t", console=Quiet())
    assert len(summary.finished) == 2 and not summary.failed
    assert_complete_store(root, specs)
    info, recorded = read_grid(root)
    assert info["suite"] == "t" and recorded == specs
    bench = load_bench(root)
    assert {r.run_id for r in bench.finished} == {s.run_id() for s in specs} and not bench.extra_runs
    mtimes = {p: p.stat().st_mtime_ns for p in (root / RUNS).rglob("*")}

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(medvtab.engine.run, "train_run", must_not_train)
    console = Quiet()
    again = run_grid(root, specs, suite="t", console=console)
    assert len(again.skipped) == 2 and not again.finished and not again.failed
    assert {p: p.stat().st_mtime_ns for p in (root / RUNS).rglob("*")} == mtimes
    assert "2 skipped (already finished)" in console.lines[-1]


def test_a_larger_grid_runs_only_what_is_new_and_shared_specs_run_once(tmp_path):
    root = tmp_path / "store"
    run_grid(root, tiny_grid(methods=("linear",)), suite="t", console=Quiet())
    grid = parse_grid({"name": "t", "tasks": ["breastmnist"], **TINY,
                       "groups": {"main": {"methods": ["linear", "partial"]}, "other": {"methods": ["linear"]}}})
    specs = expand_grid(grid)
    summary = run_grid(root, specs, suite="t", console=Quiet())
    assert summary.runs == 2 and summary.specs == 3
    assert len(summary.skipped) == 1 and len(summary.finished) == 1
    rows = load_bench(root).runs
    assert [r.spec.group for r in rows] == ["main", "main", "other"]
    assert rows[0].run_id == rows[2].run_id and rows[0].metrics == rows[2].metrics


def test_failures_are_recorded_the_grid_goes_on_and_a_rerun_retries(tmp_path, monkeypatch):
    root = tmp_path / "store"
    specs = tiny_grid(methods=("linear", "partial"))
    real = medvtab.engine.run.train_run

    def flaky(task, method, *args, **kwargs):
        if method == "linear":
            raise RuntimeError("disk on fire\nsecond line")
        return real(task, method, *args, **kwargs)

    monkeypatch.setattr(medvtab.engine.run, "train_run", flaky)
    console = Quiet()
    summary = run_grid(root, specs, suite="t", console=console)
    assert len(summary.failed) == 1 and len(summary.finished) == 1
    record = json.loads((root / FAILURES / f"{specs[0].run_id()}.json").read_text())
    assert record["error"] == "RuntimeError: disk on fire" and record["spec"] == specs[0].model_dump()
    assert any("FAILED: RuntimeError: disk on fire" in line for line in console.lines)
    assert "1 failed (see" in console.lines[-1]
    assert not run_dir(root, specs[0]).exists()

    monkeypatch.setattr(medvtab.engine.run, "train_run", real)
    summary = run_grid(root, specs, suite="t", console=Quiet())
    assert len(summary.finished) == 1 and len(summary.skipped) == 1 and not summary.failed
    assert_complete_store(root, specs)  # the failure record is gone


def test_bad_run_is_recorded_as_a_one_line_error(tmp_path):
    """A run that stops with a MedvtabError (here: more shots than a class has) is a failure, not a crash."""
    root = tmp_path / "store"
    specs = expand_grid(parse_grid({"tasks": ["breastmnist"], "methods": ["linear"], "train": TINY["train"],
                                    "protocols": [{"name": "fewshot", "shots": 100000}]}))
    outcome = run_one(root, specs[0])
    assert outcome.status == "failed" and outcome.error.startswith("option '--shots'")
    assert json.loads((root / FAILURES / f"{specs[0].run_id()}.json").read_text())["traceback"] is None


def test_a_claimed_run_is_left_to_its_worker(tmp_path):
    root = tmp_path / "store"
    spec = tiny_grid(methods=("linear",))[0]
    with claim(root, spec.run_id()) as held:
        assert held
        with claim(root, spec.run_id()) as second:
            assert not second  # another open file description: as another process would see it
        assert run_one(root, spec).status == "busy"
    assert not (root / LOCKS / f"{spec.run_id()}.lock").exists()
    assert not is_finished(root, spec)


def test_a_killed_workers_claim_and_leftovers_do_not_block_a_rerun(tmp_path):
    root = tmp_path / "store"
    spec = tiny_grid(methods=("linear",))[0]
    lock = root / LOCKS / f"{spec.run_id()}.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)"), str(lock)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run_one(root, spec).status == "busy"
    finally:
        holder.kill()
        holder.wait()
    stale = root / RUNS / f".{spec.run_id()}.abc123.partial"  # an older version's staged copy
    stale.mkdir(parents=True)
    (stale / "metrics.json").write_text("{trunc")
    run_dir(root, spec).mkdir()  # a run killed in its first epoch: config and splits, no checkpoint yet
    (run_dir(root, spec) / "config.json").write_text("{trunc")
    assert run_one(root, spec).status == "finished"
    assert not stale.exists()
    assert_complete_store(root, [spec])


def test_a_run_landed_by_another_worker_is_skipped_not_failed(tmp_path, monkeypatch):
    """Without claims (a filesystem without locks) another worker may finish a run between our last look and our
    start: our attempt then stops before writing anything, and that is a skip, not a failure."""
    root = tmp_path / "store"
    spec = tiny_grid(methods=("linear",))[0]
    winner = tmp_path / "winner"
    assert run_one(winner, spec).status == "finished"
    held = runner.claim
    monkeypatch.setattr(runner, "claim", lambda r, run_id: held(tmp_path / "elsewhere", run_id))  # as if unlocked
    monkeypatch.setattr(runner, "remove_staged",  # called after our last look: the other worker lands right then
                        lambda r, run_id=None: shutil.copytree(run_dir(winner, spec), run_dir(root, spec)))
    assert run_one(root, spec).status == "skipped"
    assert not (root / FAILURES).exists()
    assert (run_dir(root, spec) / "metrics.json").read_text() == (run_dir(winner, spec) / "metrics.json").read_text()


def test_two_unlocked_workers_finishing_one_run_leave_one_valid_run(tmp_path, monkeypatch):
    """Both finish (the other lands while we train): every file is replaced atomically with the same
    deterministic result, so the store holds one complete run."""
    root = tmp_path / "store"
    spec = tiny_grid(methods=("linear",))[0]
    winner = tmp_path / "winner"
    first = run_one(winner, spec)

    def land_the_other_meanwhile(step, total, loss):
        for f in run_dir(winner, spec).iterdir():
            shutil.copy(f, run_dir(root, spec) / f.name)

    held = runner.claim
    monkeypatch.setattr(runner, "claim", lambda r, run_id: held(tmp_path / "elsewhere", run_id))
    second = run_one(root, spec, on_step=land_the_other_meanwhile)
    assert second.status in ("finished", "skipped")
    assert_complete_store(root, [spec])
    strip = lambda m: {k: v for k, v in m.items() if k not in runner.TIMING_KEYS}  # noqa: E731
    assert strip(json.loads((run_dir(root, spec) / "metrics.json").read_text())) == strip(first.metrics)


# --- the kill test -------------------------------------------------------------------------------------------

KILL_GRID = """\
name: kill-test
tasks: [breastmnist, retinamnist]
methods: [linear, partial, vpt-shallow]
train: {epochs: 2, batch_size: 32}
train_size: 64
"""

# Imports the CLI once (torch and all: the slow part), then forks one child per request: each child is its own
# process running ``medvtab.cli.main()`` with its own argv (exactly what the ``medvtab`` script runs), its
# output in its own log file. The driver prints each child's pid, then its exit status once it has ended.
DRIVER = """\
import json, os, sys
import medvtab.cli, medvtab.engine.run, medvtab.bench.runner  # noqa: E401 - paid once, before forking
print("ready", flush=True)
for line in sys.stdin:
    argv, log = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.argv = ["medvtab", *argv]
        code = 0
        try:
            medvtab.cli.main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 0
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


class BenchDriver:
    def __init__(self, tmp_path: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
        self.proc = subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        assert self.proc.stdout.readline().strip() == "ready"
        self.tmp_path, self.count = tmp_path, 0

    def start(self, *argv) -> tuple[int, Path]:
        self.count += 1
        log = self.tmp_path / f"bench-{self.count}.log"
        self.proc.stdin.write(json.dumps([[str(a) for a in argv], str(log)]) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline()), log

    def wait(self) -> int:
        """The last child's wait status (as os.waitpid gives it)."""
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def finished_count(out: Path) -> int:
    runs = out / RUNS
    return sum(1 for p in runs.iterdir() if (p / "metrics.json").is_file()) if runs.is_dir() else 0


def mid_run(out: Path) -> bool:
    """A run has finished an epoch (its checkpoint is written) but not the run."""
    runs = out / RUNS
    return runs.is_dir() and any((p / "checkpoint.pt").is_file() and not (p / "metrics.json").exists()
                                 for p in runs.iterdir())


def test_sigkilled_bench_resumes_to_exactly_the_grid(tmp_path):
    config = tmp_path / "grid.yaml"
    config.write_text(KILL_GRID)
    out = tmp_path / "store"
    specs = expand_grid(parse_grid(__import__("yaml").safe_load(KILL_GRID)))
    args = ("bench", "--config", config, "--out", out, "--threads", "1")
    seed = int(os.environ.get("MEDVTAB_KILL_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    # killed: once the first run has finished; between two epochs of a run (its checkpoint written), or when the
    # third has finished; after a random time (while loading, training or writing)
    kill_points = [lambda: finished_count(out) >= 1, lambda: mid_run(out) or finished_count(out) >= 3,
                   lambda: time.monotonic() > started + rng.uniform(0.2, 4.0)]
    driver = BenchDriver(tmp_path)
    try:
        for ready in kill_points:
            pid, log = driver.start(*args)
            started, deadline = time.monotonic(), time.monotonic() + 120
            while not ready() and time.monotonic() < deadline and alive(pid):
                time.sleep(0.005)
            with contextlib.suppress(ProcessLookupError):  # it may have finished the grid already
                os.kill(pid, signal.SIGKILL)
            status = driver.wait()
            assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0, log.read_text()
        before = finished_count(out)
        pid, log = driver.start(*args)
        status = driver.wait()
    finally:
        driver.close()
    output = log.read_text()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"seed {seed}:\n{output}"
    assert f"{before} skipped (already finished)" in output and "0 failed" in output, output
    assert_complete_store(out, specs)
    assert read_grid(out)[1] == specs
