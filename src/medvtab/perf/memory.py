"""Peak memory of one step: ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the resident set size, sampled
every half millisecond while the step runs (:class:`RssSampler`)."""
from __future__ import annotations

import ctypes
import gc
import os
import resource
import threading
import time
from typing import Callable

import torch


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class RssSampler:
    """Peak resident set size while the block runs, sampled every ``interval`` seconds (Linux /proc); elsewhere
    the process's lifetime peak (``getrusage``)."""

    def __init__(self, interval: float = 0.0005):
        self.interval = interval
        self.start = self.peak = 0
        self.kind = "rss_sampled"
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            rss = _rss_bytes()
            if rss is not None and rss > self.peak:
                self.peak = rss
            time.sleep(self.interval)

    def __enter__(self):
        rss = _rss_bytes()
        if rss is None:
            self.kind = "ru_maxrss_lifetime"
            self.start = 0
            return self
        self.start = self.peak = rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.kind == "ru_maxrss_lifetime":
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            return False
        self._stop.set()
        self._thread.join()
        rss = _rss_bytes()
        if rss is not None:
            self.peak = max(self.peak, rss)
        return False


def _mb(n: float) -> float:
    return round(n / 2 ** 20, 1)


def release_free_memory() -> None:
    """Hand the C allocator's free memory back to the system (glibc ``malloc_trim``), so the resident set size
    grows with what the next step allocates instead of reusing what earlier steps freed."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(step: Callable[[], None], device: torch.device) -> dict:
    """``kind``, ``peak_mb`` and ``step_increase_mb`` (peak minus what was in use before) of one call of ``step``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"kind": "cuda_max_memory_allocated", "peak_mb": _mb(peak), "step_increase_mb": _mb(peak - before)}
    release_free_memory()
    with RssSampler() as rss:
        step()
    return {"kind": rss.kind, "peak_mb": _mb(rss.peak), "step_increase_mb": _mb(rss.peak - rss.start)}
