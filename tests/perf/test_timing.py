"""Interleaved timing: rotation, warm-up, per-round ratios."""
from __future__ import annotations

from medvtab.perf.timing import interleaved, quartiles


def test_interleaved_rounds_rotate_exclude_warmup_and_pair_ratios():
    order, clock = [], [0.0]
    cost = {"a": 1.0, "b": 2.0, "c": 4.0}

    def case(name):
        def run():
            order.append(name)
            clock[0] += cost[name]
        return run

    t = interleaved({n: case(n) for n in cost}, rounds=3, warmup=2, settle=False, clock=lambda: clock[0])
    assert order[:6] == ["a", "b", "c"] * 2                       # warm-up rounds, untimed
    assert order[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # each round starts one case later
    assert t.times == {"a": [1.0] * 3, "b": [2.0] * 3, "c": [4.0] * 3}
    assert t.ratio("c", "a")["median"] == 4.0 and t.ratio("c", "a")["iqr"] == 0.0
    assert quartiles([1, 2, 3, 4, 5]) == (2, 3, 4)
