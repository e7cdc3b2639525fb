"""``medvtab perf``: how fast the backbones, DynaMer and every method run, measured in one process.

:mod:`medvtab.perf.timing` (interleaved repetitions, medians, IQRs, per-round ratios), :mod:`medvtab.perf.suite`
(the measurements), :mod:`medvtab.perf.report` (JSON and tables).
"""
from medvtab.perf.suite import PerfConfig, run_perf

__all__ = ["PerfConfig", "run_perf"]
