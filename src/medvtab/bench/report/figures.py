"""The report's figures (matplotlib, Agg canvas, no pyplot state): data efficiency (the paper's Figure 1c),
accuracy against trainable parameters (Figure 1a), accuracy against Total Params per sweep (scaling), attention
maps of both streams (Figure 3) and DynaMer's per-layer routing. Each function takes plain numbers (computed from
the store by the report's sections), writes one PNG atomically and returns its path. Text from data is drawn
literally (``$`` escaped, so names never turn into mathtext)."""
from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from medvtab.atomic import atomic_write

DPI = 110
LEGEND_IN_PANEL = 6  # more lines than this: one legend beside the panels
_RC = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9,
       "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8}


def literal(text: str) -> str:
    """Text from data, drawn as is (a ``$`` would start mathtext)."""
    return str(text).replace("$", r"\$")


def short(text: str, width: int = 28) -> str:
    """A label that fits a plot: a path's file name (a spec's after its '@'), cut to ``width`` characters."""
    head, at, tail = str(text).partition("@")
    name = str(text)
    if "/" in name or "\\" in name:
        name = f"{head}@{Path(tail).name}" if at else Path(name).name
    return name if len(name) <= width else name[: width - 1] + "…"


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)

    def write(tmp):
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
        os.chmod(tmp, 0o644)  # like the report that embeds it: meant to be shared

    atomic_write(Path(path), write)
    return Path(path)


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def data_efficiency(curves: dict[str, dict[str, list[tuple[float, float, float]]]], floors: dict[str, float],
                    xlabel: str, path: Path, ylabel: str = "test accuracy (%)") -> Path:
    """One panel per task: accuracy (mean, std over seeds) against the amount of training data, one line per
    method. ``curves[task][method] = [(x, mean, std), ...]``; ``floors[task]``: the majority-class rate. Also
    the tuning's sensitivity plot (validation score against a hyper-parameter, ``ylabel``). A method has one colour
    in every panel; more than ``LEGEND_IN_PANEL`` methods share one legend beside the panels."""
    methods = list(dict.fromkeys(m for lines in curves.values() for m in lines))
    palette = [f"C{i}" for i in range(10)] if len(methods) <= 10 else list(matplotlib.colormaps["tab20"].colors)
    colours = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    shared = len(methods) > LEGEND_IN_PANEL
    with rc_context(_RC):
        rows, cols = _grid(len(curves))
        fig = Figure(figsize=(3.6 * cols + (1.6 if shared else 0), 2.9 * rows))
        xs_all = [x for lines in curves.values() for pts in lines.values() for x, _, _ in pts]
        log_x = min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 10
        for k, (task, lines) in enumerate(curves.items()):
            ax = fig.add_subplot(rows, cols, k + 1)
            for method, pts in lines.items():
                pts = sorted(pts)
                x = [p[0] for p in pts]
                y = np.array([100 * p[1] for p in pts])
                err = np.nan_to_num(np.array([100 * p[2] for p in pts]))
                ax.errorbar(x, y, yerr=err, marker="o", ms=3.5, capsize=2, lw=1.2, color=colours[method],
                            label=literal(short(method)))
            if task in floors and math.isfinite(floors[task]):
                ax.axhline(100 * floors[task], color="grey", ls="--", lw=0.9, label="majority class")
            if log_x:
                ax.set_xscale("log")
            ticks = sorted({p[0] for pts in lines.values() for p in pts})
            if len(ticks) <= 8:
                ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
                ax.xaxis.set_minor_locator(NullLocator())
            ax.set_title(literal(short(task, 40)))
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if not shared:
                ax.legend(loc="best")
        if shared:
            handles = [Line2D([], [], color=colours[m], marker="o", ms=3.5, lw=1.2) for m in methods]
            fig.legend(handles, [literal(short(m)) for m in methods], loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        return _save(fig, path)


def params_accuracy(points: list[tuple[str, float, float]], path: Path, ylabel: str) -> Path:
    """Mean accuracy against trainable parameters (log x), one labelled point per method:
    ``(method, trainable params, mean accuracy)``."""
    with rc_context(_RC):
        fig = Figure(figsize=(6.4, 4.2))
        ax = fig.add_subplot(1, 1, 1)
        for label, params, acc in points:
            is_dynamer = label.startswith("dynamer")
            ax.plot([params], [100 * acc], "*" if is_dynamer else "o", ms=13 if is_dynamer else 7,
                    color="tab:red" if is_dynamer else "tab:blue")
            ax.annotate(literal(short(label, 32)), (params, 100 * acc), textcoords="offset points", xytext=(6, 4),
                        fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.margins(x=0.15, y=0.15)
        fig.tight_layout()
        return _save(fig, path)


def scaling(panels: dict[str, dict[str, list[tuple[float, float, float]]]], plateaus: dict[str, dict[str, float]],
            floors: dict[str, float], title: str, path: Path) -> Path:
    """One panel per task: test accuracy (mean, std over seeds as error bars) against Total Params (log x), one
    line per family; each family's validation plateau ringed. ``panels[task][family] = [(ratio, mean, std)]``,
    ``plateaus[task][family]``: the ratio of the point where validation accuracy stops improving."""
    families = list(dict.fromkeys(f for lines in panels.values() for f in lines))
    colours = {f: f"C{i % 10}" for i, f in enumerate(families)}
    with rc_context(_RC):
        rows, cols = _grid(len(panels))
        fig = Figure(figsize=(4.2 * cols, 3.2 * rows))
        for k, (task, lines) in enumerate(panels.items()):
            ax = fig.add_subplot(rows, cols, k + 1)
            for family, pts in lines.items():
                pts = sorted(pts)
                x = [p[0] for p in pts]
                ax.errorbar(x, [100 * p[1] for p in pts], yerr=np.nan_to_num([100 * p[2] for p in pts]), marker="o",
                            ms=3.5, capsize=2, lw=1.2, color=colours[family], label=literal(short(family, 36)))
                best = plateaus.get(task, {}).get(family)
                for ratio, mean, _ in pts:
                    if best is not None and ratio == best:
                        ax.plot([ratio], [100 * mean], "o", ms=10, mfc="none", mec=colours[family], mew=1.5)
            if task in floors and math.isfinite(floors[task]):
                ax.axhline(100 * floors[task], color="grey", ls="--", lw=0.9, label="majority class")
            xs = [p[0] for pts in lines.values() for p in pts]
            ax.set_xscale("log")
            ticks = np.geomspace(min(xs), max(xs), 5) if len(set(xs)) > 1 else np.array(xs[:1])
            ax.set_xticks(ticks, [f"{t:.3f}X" for t in ticks])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_title(literal(short(task, 40)))
            ax.set_xlabel("Total Params (log scale); ring: validation plateau")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(loc="best")
        fig.suptitle(literal(title))
        fig.tight_layout()
        return _save(fig, path)


def routing(layers: list[str], usage: dict[str, np.ndarray], gates: dict[str, tuple[np.ndarray, np.ndarray]],
            kept: dict[str, np.ndarray], path: Path) -> Path:
    """Per layer: each stream's expert usage (stacked bars, fractions of routed tokens per expert), and the
    mean gate value and kept-token fraction per stream (``gates[stream] = (mean, std)`` over runs)."""
    with rc_context(_RC):
        streams = list(usage)
        fig = Figure(figsize=(3.6 * (len(streams) + 1), 3.2))
        x = np.arange(len(layers))
        for k, stream in enumerate(streams):
            ax = fig.add_subplot(1, len(streams) + 1, k + 1)
            u = usage[stream]  # (layers, experts)
            bottom = np.zeros(len(layers))
            for e in range(u.shape[1]):
                ax.bar(x, u[:, e], bottom=bottom, label=f"expert {e}", width=0.7)
                bottom += np.nan_to_num(u[:, e])
            ax.set_xticks(x, layers)
            ax.set_ylim(0, 1.05)
            ax.set_xlabel("layer (block index)")
            ax.set_ylabel("share of routed tokens")
            ax.set_title(f"{stream} stream: expert usage")
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2, frameon=False)
        ax = fig.add_subplot(1, len(streams) + 1, len(streams) + 1)
        for stream in streams:
            mean, std = gates[stream]
            if np.isfinite(mean).any():
                ax.errorbar(x, mean, yerr=np.nan_to_num(std), marker="o", ms=4, capsize=2, label=f"gate, {stream}")
            if stream in kept and np.isfinite(kept[stream]).any():
                ax.plot(x, kept[stream], ls=":", marker=".", label=f"kept fraction, {stream}")
        ax.set_xticks(x, layers)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("layer (block index)")
        ax.set_title("mean gate value and kept tokens")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=1, frameon=False)
        fig.tight_layout()
        return _save(fig, path)


def attention(images: np.ndarray, maps: dict[str, np.ndarray], row_titles: list[str], col_titles: dict[str, str],
              path: Path) -> Path:
    """One row per image: the image, then each stream's attention map over it (min-max scaled per map;
    patches a stream's last block did not see are left blank). ``images``: (N, H, W, C) uint8;
    ``maps[stream]``: (N, gh, gw) with NaN where no attention was computed."""
    with rc_context(_RC):
        n, cols = len(images), 1 + len(maps)
        fig = Figure(figsize=(2.3 * cols, 2.3 * n))
        for r in range(n):
            img = images[r]
            h, w = img.shape[:2]
            shown = img[..., 0] if img.shape[-1] == 1 else img
            ax = fig.add_subplot(n, cols, r * cols + 1)
            ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=255, extent=(0, w, h, 0))
            ax.set_title(literal(row_titles[r]), fontsize=8)
            ax.axis("off")
            for c, (stream, m) in enumerate(maps.items()):
                a = np.array(m[r], dtype=float)
                finite = np.isfinite(a)
                if finite.any():
                    lo, hi = np.nanmin(a), np.nanmax(a)
                    a = (a - lo) / (hi - lo) if hi > lo else np.where(finite, 0.5, np.nan)
                ax = fig.add_subplot(n, cols, r * cols + 2 + c)
                ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=255, extent=(0, w, h, 0))
                ax.imshow(np.ma.masked_invalid(a), cmap="inferno", alpha=0.55, extent=(0, w, h, 0),
                          interpolation="nearest", vmin=0, vmax=1)
                ax.set_xlim(0, w)
                ax.set_ylim(h, 0)
                if r == 0:
                    title = "\n".join(textwrap.fill(part, 34) for part in col_titles.get(stream, stream).split("\n"))
                    ax.set_title(literal(title), fontsize=7)
                ax.axis("off")
        fig.tight_layout()
        return _save(fig, path)
