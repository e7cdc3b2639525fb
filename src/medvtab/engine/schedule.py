"""The learning-rate schedule of every medvtab training loop: linear warm-up, then cosine decay.

The engine's loop (:mod:`medvtab.engine.loop`) warms up for a tenth of the run (at most one epoch) and decays
to zero; the tiny backbones' pre-training (:mod:`medvtab.engine.pretrain`) warms up for 5 % and decays to zero;
the MedVQA stages (:mod:`medvtab.vqa.train`) warm up for 5 % and decay to a tenth (nanoGPT's schedule).
"""
from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int, peak: float = 1.0, floor: float = 0.0, *,
                  fraction_first: bool = False) -> float:
    """The learning rate at ``step`` (0-based) of ``total``: rising linearly to ``peak`` over the first
    ``warmup`` steps, then falling along a half cosine to ``floor * peak`` at ``total``.

    ``fraction_first``: the cosine's argument rounded as ``pi * (done / span)`` (the MedVQA stages') instead of
    ``pi * done / span`` (the engine's); the two differ in the last bit, and each caller keeps its results."""
    if step < warmup:
        return peak * (step + 1) / warmup
    done, span = step - warmup, max(1, total - warmup)
    angle = math.pi * (done / span) if fraction_first else math.pi * done / span
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(angle)))


def warmup_steps(total: int, fraction: float) -> int:
    """A warm-up of ``fraction`` of ``total`` steps (at least one)."""
    return max(1, int(fraction * total))
