"""Peak memory of a step on a CPU: the resident set size, sampled while the step runs."""
from __future__ import annotations

import time

import torch

from medvtab.perf.memory import peak_memory


def test_peak_memory_sees_what_a_step_allocates():
    def step():
        buffer = torch.ones(16 * 2 ** 20)  # 64 MiB, written (so resident)
        time.sleep(0.01)
        del buffer

    memory = peak_memory(step, torch.device("cpu"))
    assert memory["kind"] in ("rss_sampled", "ru_maxrss_lifetime")
    assert memory["peak_mb"] > 0
    if memory["kind"] == "rss_sampled":
        assert memory["step_increase_mb"] >= 48
