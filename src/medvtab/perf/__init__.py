"""``medvtab perf``: how fast the backbones, DynaMer and every method run, measured in one process.

:mod:`~medvtab.perf.run` runs the measurements in order (one module each: :mod:`~medvtab.perf.backbones`,
:mod:`~medvtab.perf.skipping`, :mod:`~medvtab.perf.training`, :mod:`~medvtab.perf.moe`,
:mod:`~medvtab.perf.flops`, :mod:`~medvtab.perf.vitb`) on a :class:`~medvtab.perf.context.Context`;
:mod:`~medvtab.perf.timing` (interleaved repetitions, medians, IQRs, per-round ratios),
:mod:`~medvtab.perf.memory` (peak memory of a step), :mod:`~medvtab.perf.report` (JSON and tables).
"""
from medvtab.perf.context import PerfConfig
from medvtab.perf.run import run_perf

__all__ = ["PerfConfig", "run_perf"]
