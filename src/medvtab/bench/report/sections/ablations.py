"""DynaMer's ablations (the paper's Tables 4-7, and the number of DynaMer layers, which the paper does not ablate),
described by data: :data:`ABLATIONS` says, per grid group, which
paper table it mirrors, which options make a variant, how a variant is shown and ordered, and whether the table
has inference-time columns. One builder turns any of them into a section."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

from medvtab.bench.report.load import Bench, Run
from medvtab.bench.report.stats import mean_std
from medvtab.bench.report.tables import (FLOOR_NOTE, MISSING, C, Cell, Section, Table, floor_row, floors, group_section,
                                         mark_best, ordered, pct_cell, ratio_cell, seed_note)
from medvtab.errors import MedvtabError
from medvtab.methods.dynamer.config import SKIP_MODES, parse_layers

STREAMS = ("general", "medical")
GATE_RANK = {"none": 0, "general": 1, "medical": 2, "both": 3}
MODE_RANK = {mode: i for i, mode in enumerate(SKIP_MODES)}
TIMING_COLUMNS = ("ms per batch", "Speed-up vs 100 %", "Images/s")


@dataclass(frozen=True)
class Layout:
    """The backbones' shape, from the runs' config.json: each stream's width, the depth (None if unknown)."""
    widths: list[int] | None
    depth: int | None


@dataclass(frozen=True)
class Ablation:
    """One ablation group of the grid and how the report shows it."""
    group: str
    label: str  # what is ablated
    paper_table: str  # the DynaMer paper's table it mirrors
    table_title: str
    columns: tuple[str, ...]  # the columns that describe a variant
    variant: Callable[[dict], tuple]  # the method config -> the swept options
    cells: Callable[[tuple, Layout], list[str]]  # a variant -> its describing cells
    rank: Callable[[tuple, list[str]], tuple]  # (variant, its cells) -> sort key
    note: Callable[[Layout, dict[tuple, list[Run]]], str | None]  # (layout, finished runs per variant) -> note
    timed: bool = False  # inference-time columns after the describing ones (TIMING_COLUMNS)

    @property
    def title(self) -> str:
        return f"Ablation: {self.label} ({self.paper_table})"


def _gate_dims(gates: str, dim: str, widths: list[int] | None) -> list[str]:
    out = []
    for s, stream in enumerate(STREAMS):
        if gates not in ("both", stream):
            out.append("0")
        elif widths:
            w = widths[s]
            value = {"width": w, "width/2": w // 2, "width/4": w // 4, "1": 1}.get(dim)
            out.append(dim if value is None else str(value) if str(value) == dim else f"{value} ({dim})")
        else:
            out.append(dim)
    return out


def _layer_count(layers: str, depth: int | None) -> str:
    if depth:
        try:
            return f"{len(parse_layers(layers, depth))} ({layers})"
        except MedvtabError:
            pass
    return layers


def _gated_layer_counts(gates: str, layers: str, depth: int | None) -> list[str]:
    return [_layer_count(layers, depth) if gates in ("both", stream) else "0" for stream in STREAMS]


def _by_size(variant: tuple, cells: list[str]) -> tuple:
    """Variants without a gate on one stream first (smallest first), then the rest from the largest down."""
    dims = [int(re.match(r"\d+", s).group()) if re.match(r"\d+", s) else 0 for s in cells]
    return (0, sum(dims)) if min(dims) == 0 else (1, -sum(dims))


def _timing_note(layout: Layout, cells: dict[tuple, list[Run]]) -> str:
    batch = ordered(str((r.metrics or {}).get("eval_batch_size", "?")) for rs in cells.values() for r in rs)
    return (f"Inference time: mean ms per evaluation batch of {' / '.join(batch) or '?'} images during each "
            f"run's test evaluation, over all runs of the row (± across runs); speed-up against the 100 % "
            f"row of the same skip mode. 'adapter' skips only the adapter (the paper's eq. 4); 'later-"
            f"blocks' also lets skipped tokens bypass the next block (the first block sees every token); "
            f"'block' routes every block, the first included, from the block's input. Timings from one "
            f"machine under varying load (see the header) are noisy; compare rows of one bench run only.")


ABLATIONS = (
    Ablation("ablation-gates", "gates", "Table 4", "Accuracy with and without each stream's gate",
             ("General gate", "Medical gate"),
             variant=lambda cfg: (cfg.get("gates"),),
             cells=lambda v, layout: ["✓" if v[0] in ("both", s) else "✗" for s in STREAMS],
             rank=lambda v, cells: GATE_RANK.get(v[0], 9),
             note=lambda layout, cells: None),
    Ablation("ablation-gate-dim", "gate dimension", "Table 5", "Accuracy by gate dimension",
             ("General gate dim", "Medical gate dim"),
             variant=lambda cfg: (cfg.get("gates"), str(cfg.get("gate_dim"))),
             cells=lambda v, layout: _gate_dims(v[0], v[1], layout.widths),
             rank=_by_size,
             note=lambda layout, cells: (f"Gate dimension: gate values per token (width {layout.widths[0]} / "
                                         f"{layout.widths[1]}); 0 = no gate." if layout.widths else None)),
    Ablation("ablation-gated-layers", "gated layers", "Table 6",
             "Accuracy by number of gated layers", ("General gated layers", "Medical gated layers"),
             variant=lambda cfg: (cfg.get("gates"), str(cfg.get("gated_layers"))),
             cells=lambda v, layout: _gated_layer_counts(v[0], v[1], layout.depth),
             rank=_by_size,
             note=lambda layout, cells: (f"Gated layers: number of the {layout.depth} DynaMer layers (one after "
                                         f"every block) with their gates (option 'gated_layers'); the others add "
                                         f"the experts' output ungated; 0 = that stream has no gate."
                                         if layout.depth else None)),
    Ablation("ablation-keep-ratio", "skipping router keep ratio, inference time", "Table 7",
             "Inference time and accuracy by share of tokens routed", ("Tokens routed", "Skip mode"),
             variant=lambda cfg: (float(cfg.get("keep_ratio", 1.0)), str(cfg.get("skip_mode", "adapter"))),
             cells=lambda v, layout: [f"{100 * v[0]:g} %", v[1]],
             rank=lambda v, cells: (-v[0], MODE_RANK.get(v[1], 9)),
             note=_timing_note, timed=True),
    Ablation("ablation-adapter-layers", "DynaMer layers", "not in the paper",
             "Accuracy by number of blocks followed by a DynaMer layer", ("DynaMer layers",),
             variant=lambda cfg: (str(cfg.get("layers")),),
             cells=lambda v, layout: [_layer_count(v[0], layout.depth)],
             rank=_by_size,
             note=lambda layout, cells: (f"DynaMer layers: number of the {layout.depth} blocks followed by a DynaMer "
                                         f"layer (option 'layers'); the other blocks have no adapter. The paper's "
                                         f"Table 6 varies the gated layers instead (above)." if layout.depth
                                         else None)),
)


def _backbone_field(runs: list[Run], name: str) -> list | None:
    for r in runs:
        bbs = (r.config or {}).get("backbones")
        if isinstance(bbs, list) and len(bbs) == 2 and all(isinstance(b, dict) and name in b for b in bbs):
            return [b[name] for b in bbs]
    return None


def _timing_cells(runs: list[Run], variant: tuple, timing: dict[tuple, tuple]) -> list[Cell]:
    """ms per batch, the speed-up against keep ratio 1 of the same skip mode, images per second."""
    ms, sd, n = timing[variant]
    base = timing.get((1.0, variant[1]), (math.nan, math.nan, 0))[0]
    speed = base / ms if n and math.isfinite(base) and ms > 0 else math.nan
    ips = mean_std([r.metric("eval_images_per_second") for r in runs])
    return [Cell(f"{ms:.1f}" + (f" ± {sd:.1f}" if math.isfinite(sd) else "") if n else MISSING, ms),
            Cell(f"{speed:.2f}x" if math.isfinite(speed) else MISSING, speed),
            Cell(f"{ips[0]:.0f}" if ips[2] else MISSING, ips[0])]


def ablation_section(bench: Bench, ablation: Ablation) -> Section:
    runs, section = group_section(bench, ablation.group, ablation.title)
    if not runs:
        return section
    tasks = ordered(r.spec.task for r in runs)
    layout = Layout(_backbone_field(runs, "width"), (_backbone_field(runs, "depth") or [None])[0])
    variant = {id(r): ablation.variant(r.method_config()) for r in runs}
    shown = {v: ablation.cells(v, layout) for v in ordered(variant.values())}
    variants = sorted(shown, key=lambda v: ablation.rank(v, shown[v]))
    cells = {v: [r for r in runs if r.finished and variant[id(r)] == v] for v in variants}
    floor = floors([r for r in runs if r.finished])
    n_expected = max((len({r.spec.seed for r in rs if r.spec.task == t}) for rs in cells.values() for t in tasks),
                     default=0)
    timing = {v: mean_std([r.metric("ms_per_batch") for r in rs]) for v, rs in cells.items()} \
        if ablation.timed else {}
    columns = list(ablation.columns) + (list(TIMING_COLUMNS) if ablation.timed else [])
    rows = []
    for v in variants:
        rs = cells[v]
        row = [C(x) for x in shown[v]] + (_timing_cells(rs, v, timing) if ablation.timed else [])
        row.append(ratio_cell(rs))
        row += [pct_cell([r.metric("accuracy") for r in rs if r.spec.task == t], n_expected, floor.get(t, math.nan))
                for t in tasks]
        rows.append(row)
    first = len(columns) + 1
    mark_best(rows, list(range(first, first + len(tasks))))
    if ablation.timed:
        timed = len(ablation.columns)
        mark_best(rows, [timed], higher=False)
        mark_best(rows, [timed + 1, timed + 2])
    rows.append(floor_row(floor, tasks, len(columns)))
    notes = [seed_note(n_expected), FLOOR_NOTE]
    note = ablation.note(layout, cells)
    if note:
        notes.append(note)
    section.tables.append(Table(ablation.group, ablation.table_title, columns + ["Total Params"] + tasks, rows,
                                notes))
    return section
