"""DynaMer's routing per layer: expert usage, mean gate value and kept tokens of each stream, table and figure."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from medvtab.bench.report import figures
from medvtab.bench.report.load import Bench, number
from medvtab.bench.report.sections.main import MAIN
from medvtab.bench.report.stats import mean_std
from medvtab.bench.report.tables import MISSING, C, FigureRef, Section, Table, ordered

STREAMS = ("general", "medical")


def _routing_ok(routing) -> bool:
    """metrics.json 'routing' as DynaMer writes it: {layer: {stream: {"expert_usage": [...], ...}}}."""
    try:
        return bool(routing) and all(isinstance(v[s]["expert_usage"], list) and v[s]["expert_usage"]
                                     for v in routing.values() for s in STREAMS)
    except (AttributeError, KeyError, TypeError):
        return False


def routing_section(bench: Bench, figures_dir: Path) -> Section:
    section = Section("routing", "DynaMer routing: expert usage and gates per layer")
    dyn = [r for r in bench.finished if r.spec.method == "dynamer" and _routing_ok(r.metrics.get("routing"))]
    main = [r for r in dyn if r.spec.group == MAIN]
    plain = [r for r in main if not r.spec.options] or main or [r for r in dyn if not r.spec.options] or dyn
    if not plain:
        section.paragraphs.append("No finished DynaMer run with routing statistics.")
        return section
    experts = len(next(iter(plain[0].metrics["routing"].values()))["general"]["expert_usage"])
    use = [r for r in plain if all(len(v[s]["expert_usage"]) == experts for v in r.metrics["routing"].values()
                                   for s in STREAMS)]
    layers = sorted({k for r in use for k in r.metrics["routing"]}, key=lambda k: int(k) if k.isdigit() else 1e9)
    usage, gates, kept = {}, {}, {}
    rows = []
    for stream in STREAMS:
        u = np.full((len(layers), experts), math.nan)
        g = np.full((2, len(layers)), math.nan)
        kf = np.full(len(layers), math.nan)
        for i, layer in enumerate(layers):
            stats = [r.metrics["routing"][layer][stream] for r in use if layer in r.metrics["routing"]]
            if stats:
                u[i] = np.mean([s["expert_usage"] for s in stats], axis=0)
                gm, gs, _ = mean_std([number(s.get("mean_gate")) for s in stats])
                g[:, i] = gm, gs
                kf[i] = mean_std([number(s.get("kept_fraction")) for s in stats])[0]
        usage[stream], gates[stream], kept[stream] = u, (g[0], g[1]), kf
    for i, layer in enumerate(layers):
        row = [C(layer)]
        for stream in STREAMS:
            u = usage[stream][i]
            gm, gs = gates[stream][0][i], gates[stream][1][i]
            row += [C(" / ".join(f"{x:.2f}" for x in u) if np.isfinite(u).all() else MISSING),
                    C((f"{gm:.3f}" + (f" ± {gs:.3f}" if math.isfinite(gs) else "")) if math.isfinite(gm)
                      else "no gate", gm),
                    C(f"{kept[stream][i]:.2f}" if math.isfinite(kept[stream][i]) else MISSING, kept[stream][i])]
        rows.append(row)
    groups = ordered(r.spec.group for r in use)
    what = (f"{len(use)} finished DynaMer run{'s' if len(use) > 1 else ''} (group {', '.join(groups)}; tasks "
            f"{', '.join(ordered(r.spec.task for r in use))})")
    table = Table("routing", "Per-layer routing statistics (test set)",
                  ["Layer", "General: expert usage", "General: mean gate", "General: kept fraction",
                   "Medical: expert usage", "Medical: mean gate", "Medical: kept fraction"], rows,
                  [f"Averaged over {what}. Expert usage: share of the routed tokens each expert (0-"
                   f"{experts - 1}) processed, from metrics.json 'routing'; mean gate: average gate value g in "
                   f"x + g * delta (± across runs); kept fraction: tokens through the adapter."])
    section.tables.append(table)
    path = figures.routing(layers, usage, gates, kept, figures_dir / "routing.png")
    section.figures.append(FigureRef("routing", path, f"Expert usage per layer and stream, mean gate values and kept "
                                                      f"tokens, averaged over {what}."))
    return section
