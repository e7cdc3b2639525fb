"""``medvtab perf``'s tables for people."""
from __future__ import annotations

from rich.console import Console

from medvtab.perf import PerfConfig, run_perf
from medvtab.perf.report import print_tables


def test_perf_tables_for_people():
    result = run_perf(PerfConfig.for_profile("cpu", quick=True, methods=("dynamer",), threads=1))
    console = Console(record=True, width=200)
    print_tables(result, console)
    text = console.export_text()
    for title in ("backbones forward", "DynaMer inference vs keep ratio", "training step", "MoE adapter",
                  "loading", "FLOPs", "linear probing", "targets"):
        assert title in text, title
