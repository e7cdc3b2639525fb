"""Where a grid's jobs run: in this process (``serial``), in a pool of local worker processes (``local``, the
standard library's ``ProcessPoolExecutor``) or as Ray tasks (``ray``, on a private local instance or a cluster).

A job is a call ``fn(*args)`` of a picklable top-level function (a run, a tuning study); :func:`map_jobs` yields
``(args, result)`` as jobs end, in the order they end, with the exception in place of the result when a job
raised or its worker died. Each worker sets its torch CPU threads once (``threads``): a grid is many small
runs, which scale across processes far better than across threads.
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator

import torch

from medvtab.errors import MedvtabError
from medvtab.extras import require

EXECUTORS = ("serial", "local", "ray")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class WorkerDied(MedvtabError):
    """The worker process running a job ended without a result (killed, out of memory)."""


def check_executor(executor: str) -> None:
    if executor not in EXECUTORS:
        raise MedvtabError(f"option '--executor': unknown executor '{executor}'; choose from {', '.join(EXECUTORS)}")
    if executor == "ray":
        import_ray()  # a missing Ray stops here, before anything is written


def import_ray():
    return require("ray", extra="ray", feature="option '--executor ray'")


def local_cpus() -> int:
    """The CPUs this process may run on (its affinity, which a scheduler's cgroup or `taskset` narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _init_local_worker(threads: int, parent: int) -> None:
    """A local worker dies with the process that started it (Linux ``PR_SET_PDEATHSIG``), so a killed ``bench``
    leaves no orphan holding a run's claim; one whose parent died before that was set exits at once (it could
    still find jobs queued in the pipe). Then its torch threads."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)
    _set_threads(threads)


def map_jobs(fn: Callable, jobs: list[tuple], *, executor: str = "serial", workers: int | None = None,
             threads: int = 1, address: str | None = None, gpu: bool = False) -> Iterator[tuple[tuple, Any]]:
    """Run ``fn(*args)`` for every ``args`` in ``jobs``; yield ``(args, result or exception)`` as each ends.

    ``workers``: jobs in flight at once (default: the local CPUs for ``local``; the cluster's CPUs / ``threads``,
    or its GPUs with ``gpu``, for ``ray``). ``serial`` runs each job in this process, so an exception it raises
    propagates (the caller's own error handling applies) except :class:`Exception`, which is yielded.
    """
    check_executor(executor)
    if executor == "serial" or not jobs:
        yield from _serial(fn, jobs, threads)
    elif executor == "local":
        yield from _local(fn, jobs, workers or local_cpus(), threads)
    else:
        yield from _ray(fn, jobs, workers, threads, address, gpu)


def _serial(fn, jobs, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for args in jobs:
            try:
                result = fn(*args)
            except Exception as err:  # noqa: BLE001 - yielded to the caller, as from a worker
                result = err
            yield args, result
    finally:
        torch.set_num_threads(before)


def _local(fn, jobs, workers, threads):
    """A pool of ``workers`` processes started by ``spawn`` (a forked child of a process that already ran
    OpenMP code can hang), each with ``threads`` torch threads. Ctrl-C reaches the workers too (one process
    group); the pool is then torn down without waiting and the interrupt goes on."""
    workers = min(workers, len(jobs))
    if workers == 1:
        yield from _serial(fn, jobs, threads)
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_local_worker, initargs=(threads, os.getpid()))
    try:
        pending = {pool.submit(fn, *args): args for args in jobs}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                args = pending.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    result = WorkerDied("a worker process died (killed, or out of memory) while running this job")
                except Exception as err:  # noqa: BLE001 - the job raised in its worker
                    result = err
                yield args, result
    except BaseException:  # an interrupt, or the caller stopped early: no waiting for running jobs
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)  # every job has ended; waiting lets the pool's own threads end cleanly before exit


def _ray(fn, jobs, workers, threads, address, gpu):
    """One Ray task per job (``threads`` CPUs, or one GPU), at most ``workers`` in flight. Without ``address``, a
    private local instance (never someone else's cluster), shut down at the end."""
    ray = import_ray()
    cpus = 1 if gpu else threads
    started = False
    if not ray.is_initialized():
        common = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        if address:
            ray.init(address=address, **common)
        else:
            ray.init(address="local", num_cpus=(workers * cpus) if workers else local_cpus(),
                     object_store_memory=100 * 2**20, **common)
        started = True
    try:
        remote = ray.remote(num_cpus=cpus, num_gpus=1 if gpu else 0, max_retries=0)(_with_threads)
        slots = ray.cluster_resources().get("GPU", 0) if gpu else ray.cluster_resources().get("CPU", 1) // cpus
        limit = workers or max(1, int(slots))
        queue, pending = list(jobs), {}
        while queue or pending:
            while queue and len(pending) < limit:
                args = queue.pop(0)
                pending[remote.remote(fn, threads, *args)] = args
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                args = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as err:  # noqa: BLE001 - the task raised, or its worker died
                    result = err
                yield args, result
    finally:
        if started:
            ray.shutdown()


def _with_threads(fn, threads, *args):
    _set_threads(threads)
    return fn(*args)
