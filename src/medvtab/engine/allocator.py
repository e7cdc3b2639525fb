"""The process's memory allocator, tuned once at start-up by every medvtab command (torch-free, so the CLI sets it
before anything heavy is imported)."""
from __future__ import annotations

import ctypes
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory in the process (allocations up to 32 MB from the heap, no trimming below 1 GB
    free) instead of returning each large activation buffer to the OS and faulting it back in at the next
    forward: measured on the tiny pair at batch 256 on a CPU, about 28,000 page faults and 13-15 % of the time
    of every forward, and most of the run-to-run spread of ``medvtab perf``. Python processes only; True where it
    applied (Linux with glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (e.g. musl): its allocator as it is
        return False
