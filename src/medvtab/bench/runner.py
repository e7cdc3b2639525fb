"""Running a grid into a results store, through an executor (:mod:`medvtab.bench.executors`: ``serial`` in this
process, ``local`` worker processes, ``ray`` tasks).

Every executor calls :func:`run_one` per run, which makes a run safe to interrupt, resume and race:

* a finished run (``DIR/runs/<run_id>/metrics.json``, written last) is never recomputed;
* a worker *claims* a run with an exclusive, non-blocking ``flock`` on ``DIR/locks/<run_id>.lock`` for as long
  as it trains it. The kernel drops the lock when the process dies however it dies, so a claim never outlives
  its worker (no stale claims to wait for); a run claimed by a live worker is left to it (``busy``);
* the claim holder owns the run directory: :func:`medvtab.engine.run.train_run` (``resume="auto"``) continues
  an unfinished run from its last epoch checkpoint, or clears what a run killed in its first epoch left.
  Leftovers of killed workers that no later run of the grid touches (``.partial`` directories of older
  versions, a checkpoint left beside a finished run's metrics.json, lock files) are removed at the end of a
  grid, each under its run's claim;
* should two workers both finish a run anyway (no ``fcntl``, or a filesystem whose locks do not work), the one
  that finds metrics.json already there counts it as ``skipped``, not as a failure (runs are deterministic
  for a spec on CPU, and every file is replaced atomically);
* a failed run (a :class:`MedvtabError` or any exception) is recorded in ``DIR/failures/<run_id>.json``
  (atomically) and the grid goes on; a rerun retries it and removes the record when it succeeds.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medvtab.atomic import make_output_dir, write_json
from medvtab.backbones import load_backbone
from medvtab.bench.executors import check_executor, map_jobs
from medvtab.bench.grid import describe, execution_order, unique_runs
from medvtab.bench.store import RUNS, RunSpec, is_finished, run_dir, write_grid
from medvtab.data.loading import resolve_task
from medvtab.engine import rundir
from medvtab.engine import run as engine_run  # called as engine_run.train_run: tests replace it there
from medvtab.engine.loop import TrainConfig
from medvtab.errors import MedvtabError

try:
    import fcntl
except ImportError:  # no flock (Windows): claims fall back on the rename race, which is safe but may waste work
    fcntl = None

LOCKS, FAILURES, UNREADABLE = "locks", "failures", "unreadable"
TIMING_KEYS = ("train_seconds", "eval_images_per_second", "ms_per_batch")  # differ between identical runs
# torch CPU threads per run. A grid is many small runs: they scale across processes (--executor ray --workers N)
# far better than across threads, and on a shared machine two OpenMP threads stall whenever another job holds
# a core (measured on the 2-core development machine under load: up to 8x slower than one thread).
DEFAULT_THREADS = 1


@dataclass
class Outcome:
    """What happened to one run: ``finished`` (trained now), ``skipped`` (already finished, or another worker
    landed it first), ``busy`` (another live worker holds its claim) or ``failed``."""
    run_id: str
    status: str
    seconds: float = 0.0
    metrics: dict | None = None
    error: str | None = None
    note: str | None = None


def failure_path(root: Path, spec: RunSpec) -> Path:
    return Path(root) / FAILURES / f"{spec.run_id()}.json"


def read_failures(root: Path) -> dict[str, dict]:
    """run_id -> failure record, for runs that failed and have not succeeded since."""
    folder = Path(root) / FAILURES
    out = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a record is advisory; the run's state is decided by runs/ alone
    return out


@contextmanager
def claim(root: Path, run_id: str) -> Iterator[bool]:
    """Hold the run's claim for the ``with`` block: yields True, or False where another live worker holds it.

    An exclusive non-blocking ``flock`` on ``DIR/locks/<run_id>.lock``, released (and the file removed) on
    exit, and by the kernel when the process is killed. After locking, the path must still name the locked file
    (a releasing holder may have removed it in between); otherwise the lock is taken again on the new file.
    """
    if fcntl is None:
        yield True
        return
    path = Path(root) / LOCKS / f"{run_id}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, held = -1, False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            fd = -1
            break
        except OSError:  # a filesystem without locks (e.g. some NFS setups): rename race only
            held = True
            break
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            held = True
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n".encode())
            break
        os.close(fd)
    try:
        yield held
    finally:
        if fd >= 0:
            if held:
                path.unlink(missing_ok=True)
            os.close(fd)


def remove_staged(root: Path, run_id: str | None = None) -> int:
    """Remove staged (``.partial``) directories that killed workers left: of one run (call it while holding
    that run's claim), or of every run whose claim is free. Returns how many were removed."""
    runs = Path(root) / RUNS
    if not runs.is_dir():
        return 0
    removed = 0
    for stage in runs.glob(f".{glob.escape(run_id)}.*.partial" if run_id else ".*.partial"):
        if run_id is None:
            owner = stage.name[1:].rsplit(".", 2)[0]  # ".<run_id>.<random>.partial"
            with claim(root, owner) as held:
                if not held:
                    continue
                shutil.rmtree(stage, ignore_errors=True)
        else:
            shutil.rmtree(stage, ignore_errors=True)
        removed += 1
    return removed


def remove_finished_checkpoints(root: Path) -> None:
    """A worker killed between writing metrics.json and removing the checkpoint leaves it beside a finished run."""
    for ckpt in (Path(root) / RUNS).glob(f"*/{rundir.CHECKPOINT}"):
        if rundir.is_finished(ckpt.parent):
            with claim(root, ckpt.parent.name) as held:
                if held:
                    ckpt.unlink(missing_ok=True)


def remove_stale_locks(root: Path) -> None:
    """Remove lock files that killed workers left (a lock no live process holds); held ones stay."""
    folder = Path(root) / LOCKS
    for path in folder.glob("*.lock") if folder.is_dir() else []:
        with claim(root, path.stem):
            pass  # taking a free claim and releasing it removes its file


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if isinstance(err, MedvtabError) else f"{type(err).__name__}: {text}"


def record_failure(root: Path, spec: RunSpec, err: BaseException, device: str, seconds: float = 0.0) -> Outcome:

    message = _one_line(err)
    write_json(failure_path(root, spec), {
        "run_id": spec.run_id(), "spec": spec.model_dump(), "error": message, "type": type(err).__name__,
        "traceback": None if isinstance(err, MedvtabError) else traceback.format_exception(err),
        "device": device, "host": socket.gethostname(), "pid": os.getpid(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": round(seconds, 3)})
    return Outcome(spec.run_id(), "failed", seconds, error=message)


def set_aside_unreadable(root: Path, spec: RunSpec) -> str | None:
    """A run directory whose metrics.json cannot be read is moved to ``DIR/unreadable/<run_id>.<time>/`` (kept for
    a look, out of the store), so that the run is done again; returns a note saying so. Call under the claim."""
    d = run_dir(root, spec)
    if not rundir.unreadable_result(d):
        return None
    aside = Path(root) / UNREADABLE / f"{spec.run_id()}.{time.strftime('%Y%m%d-%H%M%S')}"
    aside.parent.mkdir(parents=True, exist_ok=True)
    d.rename(aside)
    return f"its metrics.json was unreadable: redone, the old directory kept in {aside}"


def run_one(root: str | Path, spec: RunSpec, device: str = "cpu", data_root: str | Path | None = None, *,
            on_step: Callable[[int, int, float], None] | None = None,
            on_epoch: Callable[[dict], bool | None] | None = None) -> Outcome:
    """Train one cell of a grid into ``DIR/runs/<run_id>/`` unless it is finished or claimed; never raises
    for a failed run (it is recorded), only for an interrupt. Torch's CPU threads are the executor's to set.
    ``on_epoch``: see :func:`medvtab.engine.run.train_run` (a tuner's pruning)."""
    root = Path(root)
    start = time.perf_counter()
    if is_finished(root, spec):
        return Outcome(spec.run_id(), "skipped")
    with claim(root, spec.run_id()) as held:
        if not held:
            return Outcome(spec.run_id(), "busy")
        if is_finished(root, spec):  # finished while we were looking
            return Outcome(spec.run_id(), "skipped")
        remove_staged(root, spec.run_id())
        note = set_aside_unreadable(root, spec)
        try:
            cfg = TrainConfig(**spec.train, seed=spec.seed, device=device)
            metrics = engine_run.train_run(
                spec.task, spec.method, spec.general, spec.medical, run_dir(root, spec), cfg, spec.options,
                spec.train_size, on_step, on_note=lambda message: None, protocol=spec.protocol,
                train_fraction=spec.train_fraction, shots=spec.shots, seen=spec.seen, unseen=spec.unseen,
                data_root=data_root, record={"bench": spec.model_dump()}, resume="auto", on_epoch=on_epoch,
                test=spec.test, dedupe=spec.dedupe)
        except Exception as err:  # noqa: BLE001 - every failure is recorded and the grid goes on
            if is_finished(root, spec):  # another worker (without a claim) landed it first: ours is dropped
                return Outcome(spec.run_id(), "skipped", time.perf_counter() - start)
            return record_failure(root, spec, err, device, time.perf_counter() - start)
        failure_path(root, spec).unlink(missing_ok=True)
        return Outcome(spec.run_id(), "finished", time.perf_counter() - start, metrics=metrics, note=note)


# --- grids ------------------------------------------------------------------------------------------------

@dataclass
class Summary:
    runs: int
    specs: int
    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, outcome: Outcome) -> None:
        getattr(self, outcome.status).append(outcome.run_id)

    def line(self, root: Path) -> str:
        shared = f", {self.specs - self.runs} specs sharing a run" if self.specs > self.runs else ""
        text = (f"bench: {self.runs} runs ({self.specs} specs{shared}): {len(self.finished)} finished, "
                f"{len(self.skipped)} skipped (already finished), {len(self.failed)} failed")
        if self.failed:
            text += f" (see {Path(root) / FAILURES})"
        if self.busy:
            text += f", {len(self.busy)} running in another worker"
        return text + f"; {self.seconds:.0f} s"


def check_device(device: str, local: bool) -> None:
    """A device torch understands; a CUDA one must exist where the runs are local."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise MedvtabError(f"option '--device': unknown device '{device}'; expected cpu, cuda or cuda:N") from None
    if kind == "cuda" and local and not torch.cuda.is_available():
        raise MedvtabError(f"option '--device': {device} requested but no CUDA device is available")


def preflight(specs: list[RunSpec], data_root: str | Path | None, *, backbones: bool = True) -> None:
    """Stop before the first run on what would fail every run: a task that does not resolve, a backbone spec
    that does not load (weights are loaded once here, strictly)."""
    for task in dict.fromkeys(s.task for s in specs):
        resolve_task(task, data_root)
    if backbones:
        for backbone in dict.fromkeys(b for s in specs for b in (s.general, s.medical) if b):
            load_backbone(backbone)


def _num(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def run_label(spec: RunSpec, outcome: Outcome) -> str:
    label = describe(spec)
    if outcome.status == "finished":
        m = outcome.metrics or {}
        text = f"{label}: acc {_num(m, 'accuracy')}, bal {_num(m, 'balanced_accuracy')}, auroc {_num(m, 'auroc')}"
        if isinstance(m.get("unseen"), dict):
            text += f", unseen acc {_num(m['unseen'], 'accuracy')}"
        text += f", {outcome.seconds:.1f} s  [{outcome.run_id}]"
        return text + (f" ({outcome.note})" if outcome.note else "")
    if outcome.status == "failed":
        return f"{label}: FAILED: {outcome.error}"
    if outcome.status == "busy":
        return f"{label}: running in another worker, left to it"
    return f"{label}: already finished"


def run_grid(root: Path, specs: list[RunSpec], *, suite: str, device: str = "cpu",
             data_root: str | Path | None = None, executor: str = "serial", address: str | None = None,
             workers: int | None = None, threads: int | None = None, info: dict | None = None,
             console=None, tuning=None) -> Summary:
    """Record the grid in ``DIR/bench.json`` and run every unfinished run of it (each shared run once).
    ``tuning`` (:class:`medvtab.bench.tune.Tuning`): first every (task, method) is tuned on validation
    (``DIR/tuning.json``) and the specs run with the chosen values."""
    check_executor(executor)
    check_device(device, local=executor != "ray" or address is None)
    console = console or Console(highlight=False, soft_wrap=True)
    threads = threads or DEFAULT_THREADS
    root = Path(root).resolve()
    start = time.perf_counter()
    preflight(execution_order(unique_runs(specs)), data_root, backbones=executor != "ray" or address is None)
    make_output_dir(root / RUNS)
    if tuning is not None:
        from medvtab.bench.tune import tune_grid  # imported here: tune imports this module
        specs = tune_grid(root, specs, tuning, device=device, data_root=data_root, executor=executor, workers=workers,
                          threads=threads, address=address, console=console)
        info = {**(info or {}), "tune": tuning.config.model_dump()}
    runs = execution_order(unique_runs(specs))
    write_grid(root, suite, specs, device=device, executor=executor, **(info or {}))
    summary = Summary(len(runs), len(specs))
    todo = []
    for spec in runs:
        if is_finished(root, spec):
            summary.add(Outcome(spec.run_id(), "skipped"))
        else:
            todo.append(spec)
    console.print(f"bench: {len(runs)} runs, {len(summary.skipped)} already finished, {len(todo)} to run "
                  f"({executor} executor, device {device}) -> {root}", markup=False)
    if todo:
        _run(root, todo, device, data_root, executor, address, workers, threads, summary, console)
    remove_staged(root)
    remove_finished_checkpoints(root)
    remove_stale_locks(root)
    summary.seconds = time.perf_counter() - start
    console.print(summary.line(root), markup=False)
    return summary


def _run(root, todo, device, data_root, executor, address, workers, threads, summary, console) -> None:
    """Every unfinished run through the executor; a line per run as it ends."""
    with Progress(TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not console.is_terminal) as progress:
        bar = progress.add_task("bench", total=len(todo))
        jobs = [(str(root), spec, device, None if data_root is None else str(data_root)) for spec in todo]
        for done, (args, outcome) in enumerate(map_jobs(run_one, jobs, executor=executor, workers=workers,
                                                        threads=threads, address=address,
                                                        gpu=device.startswith("cuda")), 1):
            spec = args[1]
            if isinstance(outcome, BaseException):  # the worker died (killed, out of memory)
                outcome = (Outcome(spec.run_id(), "skipped") if is_finished(root, spec)
                           else record_failure(root, spec, outcome, device))
            summary.add(outcome)
            progress.update(bar, advance=1)
            progress.console.print(f"[{done}/{len(todo)}] {run_label(spec, outcome)}", markup=False)


def print_dry_run(root: Path, specs: list[RunSpec], *, data_root: str | Path | None = None, console=None) -> dict:
    """Print the grid: per group its specs and how many are finished, failed before or pending; then every
    run with its state. Nothing is written. Returns the counts per group."""
    console = console or Console(highlight=False, soft_wrap=True)
    root = Path(root)
    failures = read_failures(root)

    def state(spec: RunSpec) -> str:
        if is_finished(root, spec):
            return "finished"
        return "failed before" if spec.run_id() in failures else "pending"

    counts: dict[str, dict[str, int]] = {}
    for spec in specs:
        row = counts.setdefault(spec.group, {"specs": 0, "finished": 0, "failed before": 0, "pending": 0})
        row["specs"] += 1
        row[state(spec)] += 1
    runs = execution_order(unique_runs(specs))
    table = Table(title=f"grid -> {root} ({len(runs)} runs, {len(specs)} specs)")
    for col in ("group", "specs", "finished", "failed before", "pending"):
        table.add_column(col, justify="left" if col == "group" else "right")
    for group, row in counts.items():
        table.add_row(group, *(str(row[k]) for k in ("specs", "finished", "failed before", "pending")))
    console.print(table)
    groups: dict[str, list[str]] = {}
    for spec in specs:
        groups.setdefault(spec.run_id(), []).append(spec.group)
    for spec in runs:
        console.print(f"{state(spec):>13}  {describe(spec)}  [{', '.join(groups[spec.run_id()])}]  "
                      f"{spec.run_id()}", markup=False)
    for task in dict.fromkeys(s.task for s in specs):
        try:
            resolve_task(task, data_root)
        except MedvtabError as err:
            console.print(f"warning: {err}", markup=False)
    return counts
