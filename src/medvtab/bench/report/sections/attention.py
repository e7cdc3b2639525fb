"""Where the model looks (the paper's Figure 3): attention maps of one DynaMer run, rebuilt from its run
directory (:mod:`medvtab.bench.report.attention`)."""
from __future__ import annotations

from pathlib import Path

from medvtab.bench.report import figures
from medvtab.bench.report.attention import run_attention
from medvtab.bench.report.load import Bench
from medvtab.bench.report.sections.main import MAIN
from medvtab.bench.report.tables import FigureRef, Section, ordered
from medvtab.errors import MedvtabError


def attention_section(bench: Bench, figures_dir: Path, enabled: bool) -> Section:
    section = Section("attention", "Where the model looks: attention maps (Figure 3)")
    dyn = [r for r in bench.finished if r.spec.method == "dynamer"]
    if not enabled:
        section.paragraphs.append("Not drawn (--no-attention).")
        return section
    if not dyn:
        section.paragraphs.append("No finished DynaMer run: no attention maps.")
        return section
    tasks = ordered(r.spec.task for r in bench.runs)
    dyn.sort(key=lambda r: (r.spec.group != MAIN, bool(r.spec.options), r.spec.protocol != "standard",
                            tasks.index(r.spec.task), r.spec.seed))
    run = dyn[0]
    try:
        maps = run_attention(run.dir)
    except (MedvtabError, OSError, KeyError, ValueError, RuntimeError) as err:
        section.paragraphs.append(f"Attention maps not drawn for run {run.run_id}: {str(err).splitlines()[0]}")
        return section
    names = maps.class_names

    def name(i: int) -> str:
        return names[i] if 0 <= i < len(names) else str(i)

    titles = [f"test #{p}: {name(y)}\npredicted: {name(q)}"
              for p, y, q in zip(maps.positions, maps.labels, maps.predictions)]
    cols = {s: f"{s} stream: {figures.short(maps.specs[s], 40)}\n{maps.kinds[s]}" for s in maps.maps}
    path = figures.attention(maps.images, maps.maps, titles, cols, figures_dir / "attention.png")
    shown = "; ".join(f"test image #{p}: class '{name(y)}', predicted '{name(q)}'"
                      for p, y, q in zip(maps.positions, maps.labels, maps.predictions))
    section.paragraphs.append(
        f"Run {run.run_id} (task {maps.task}, seed {run.spec.seed}), rebuilt from its run directory; test "
        f"images of its own test split. Last block (block {maps.block}) of each stream, averaged over heads; "
        f"each map min-max scaled on its own. {shown}.")
    section.figures.append(FigureRef("attention", path, f"Attention of the last block over the test images of "
                                                        f"{maps.task}: left the image, then the general and the "
                                                        f"medical stream."))
    return section
