"""DynaMer inference time against the keep ratio of the skipping router, in each skip mode: section "skip" of
``medvtab perf`` (the paper's Table 7 analogue), run alone.

Interleaved repetitions in one process, warm-up excluded, each timed call right after an untimed call of the
same configuration; medians, interquartile ranges, and speed-ups (time at keep ratio 1 / time at the ratio)
formed round by round. ``medvtab perf`` runs this and every other measurement; this script is kept for the
Makefile's ``bench`` target.

    python benchmarks/skip_speed.py [--general SPEC --medical SPEC] [--batch-size 256] [--rounds 7]
"""
from __future__ import annotations

import argparse

from medvtab.engine.allocator import keep_freed_memory
from medvtab.perf.report import dumps
from medvtab.perf.context import PerfConfig, machine_record, make_context
from medvtab.perf.flops import measure_flops
from medvtab.perf.skipping import measure_skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--general", default="tiny-general")
    ap.add_argument("--medical", default="tiny-medical")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", default="auto", choices=("auto", "wall", "cpu"))
    args = ap.parse_args()
    keep_freed_memory()  # as every medvtab command does (see medvtab.engine.allocator)

    cfg = PerfConfig.for_profile(args.device, quick=False, general=args.general, medical=args.medical,
                                 skip_batch_sizes=(args.batch_size,), rounds=args.rounds, threads=args.threads,
                                 clock=args.clock)
    ctx = make_context(cfg)
    skip = measure_skip(ctx, measure_flops(ctx))
    print(dumps({"general": args.general, "medical": args.medical, "batch_size": args.batch_size,
                 "rounds": args.rounds, "clock": ctx.clock, "machine": machine_record(ctx), **skip}))


if __name__ == "__main__":
    main()
