"""Interleaved timing: every case once per round, rounds repeated, warm-up rounds excluded; medians and
interquartile ranges, and ratios taken round by round.

On a shared machine the load drifts while a benchmark runs. Timing case A for a while and then case B puts the
drift into A / B; interleaving them (A, B, A, B, ...) spreads it over both, and a ratio formed within each round
(A's time over B's time, measured seconds apart) then cancels most of what is left, so ratios are the median
of the per-round ratios, not the ratio of medians. Each timed call may follow an untimed call of the same case
(``settle``), so the allocator and caches hold that case's buffers whatever ran before it.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile), linear interpolation (NumPy's default)."""
    xs = sorted(values)
    if not xs:
        return float("nan"), float("nan"), float("nan")

    def q(p: float) -> float:
        pos = p * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
    return q(0.25), q(0.5), q(0.75)


def summary(values: list[float], digits: int = 6) -> dict:
    """``median``, ``iqr``, ``q1``, ``q3``, ``min`` and ``n`` of a sample."""
    q1, med, q3 = quartiles(values)
    return {"median": round(med, digits), "iqr": round(q3 - q1, digits), "q1": round(q1, digits),
            "q3": round(q3, digits), "min": round(min(values), digits) if values else float("nan"),
            "n": len(values)}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def pick_clock(clock: str, device: torch.device) -> str:
    """``auto``: the process's CPU time on a CPU with one torch thread (what the run costs, unaffected by other
    processes competing for the cores; on an idle machine it equals the wall time), else the wall time (GPUs,
    several threads: CPU time would count idle and spinning threads)."""
    if clock != "auto":
        if clock not in CLOCKS:
            raise ValueError(f"clock must be auto, wall or cpu, got {clock!r}")
        return clock
    return "cpu" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"


@dataclass
class Timings:
    """Seconds per call of every case, round by round (``times[name][r]``: round ``r``), on the chosen clock;
    ``wall`` holds the wall-clock times of the same calls."""
    times: dict[str, list[float]] = field(default_factory=dict)
    wall: dict[str, list[float]] = field(default_factory=dict)
    clock: str = "wall"

    def summary(self, name: str) -> dict:
        out = summary(self.times[name])
        if self.clock != "wall" and name in self.wall:
            out["wall_median"] = round(statistics.median(self.wall[name]), 6)
        return out

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def ratios(self, numerator: str, denominator: str) -> list[float]:
        return [a / b for a, b in zip(self.times[numerator], self.times[denominator]) if b > 0]

    def ratio(self, numerator: str, denominator: str, digits: int = 4) -> dict:
        """``numerator`` / ``denominator`` within each round: median, IQR, quartiles."""
        return summary(self.ratios(numerator, denominator), digits)


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def interleaved(cases: dict[str, Callable[[], object]], *, rounds: int, warmup: int = 1, settle: bool = True,
                device: torch.device | str = "cpu", clock: str | Callable[[], float] = "wall") -> Timings:
    """Time every case ``rounds`` times, interleaved: round ``r`` runs each case once, starting at case ``r``
    (the order rotates, so no case always runs right after the same other case). ``warmup`` untimed rounds
    run first. With ``settle`` each timed call follows an untimed call of itself. ``clock``: "wall", "cpu" (see
    :func:`pick_clock`) or a function returning seconds."""
    device = torch.device(device)
    sync = synchronizer(device)
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    sync()
    name_of_clock = clock if isinstance(clock, str) else "custom"
    read = CLOCKS[clock] if isinstance(clock, str) else clock
    out = Timings({name: [] for name in names}, {name: [] for name in names}, name_of_clock)
    for r in range(rounds):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            fn = cases[name]
            if settle:
                fn()
            sync()
            wall, start = time.perf_counter(), read()
            fn()
            sync()
            out.times[name].append(read() - start)
            out.wall[name].append(time.perf_counter() - wall)
    return out
