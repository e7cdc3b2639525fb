"""``medvtab perf`` output: JSON for machines, rich tables for people."""
from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table


def _clean(obj):
    """NaN / inf -> None, so the JSON stays strict."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def dumps(result: dict) -> str:
    """Strict JSON (NaN and infinities become null)."""
    return json.dumps(_clean(result), indent=2, allow_nan=False)


def _s(summary: dict | None, scale: float = 1.0, unit: str = "") -> str:
    if not summary:
        return "-"
    return f"{summary['median'] * scale:.4g}{unit} ± {summary['iqr'] * scale / 2:.2g}"


def _x(summary: dict | None) -> str:
    return "-" if not summary else f"{summary['median']:.3f}x (IQR {summary['iqr']:.3f})"


def _flops(n) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return str(n)


def print_tables(result: dict, console: Console | None = None) -> None:
    console = console or Console()
    m, c = result["machine"], result["config"]
    console.print(f"[bold]medvtab perf[/bold] ({c['profile']}): {c['general']} + {c['medical']} on {m['device']} "
                  f"({m['device_name'] or m['processor']}), torch {m['torch']}, {m['threads']} threads, {m['dtype']}, "
                  f"{c['wall_seconds']} s; medians ± half the IQR, ratios per round")

    t = Table(title="1. backbones forward (s per batch)")
    for col in ("batch", "one", "both", "both / one", "images/s (both)"):
        t.add_column(col)
    for r in result["backbones"]["rows"]:
        t.add_row(str(r["batch"]), _s(r["one_s"]), _s(r["both_s"]), _x(r["both_over_one"]),
                  f"{r['images_per_s_both']:,.0f}")
    console.print(t)

    paper = result["skip"]["paper_table7_seconds_per_batch"]
    for table in result["skip"]["tables"]:
        t = Table(title=f"2. DynaMer inference vs keep ratio, batch {table['batch']} (both frozen backbones: "
                        f"{_s(table['both_backbones_seconds_per_batch'])} s)")
        for col in ("skip mode", "keep", "s / batch", "adapter s", "speed-up vs keep 1", "FLOP speed-up",
                    "/ both backbones", "paper Table 7"):
            t.add_column(col)
        for r in table["rows"]:
            ref = paper.get(str(r["keep_ratio"]))
            t.add_row(r["skip_mode"], f"{r['keep_ratio']:.0%}", _s(r["seconds_per_batch"]),
                      _s(r["adapter_seconds_per_batch"]), _x(r["speedup_vs_keep_1"]),
                      "-" if r["flops_speedup_vs_keep_1"] is None else f"{r['flops_speedup_vs_keep_1']:.2f}x",
                      _x(r["over_both_backbones"]),
                      f"{ref} s ({paper['1.0'] / ref:.2f}x)" if ref else "-")
        console.print(t)

    train = result["train_step"]
    t = Table(title=f"3. training step, batch {train['batch']}")
    for col in ("method", "s / step", "vs DynaMer", "images/s", "FLOPs / image", "peak memory MB", "step +MB"):
        t.add_column(col)
    for r in train["rows"]:
        if "error" in r:
            t.add_row(r["method"], f"[red]{r['error']}[/red]", "", "", "", "", "")
            continue
        t.add_row(r["method"], _s(r["seconds_per_step"]), _x(r["relative_to_dynamer"]), f"{r['images_per_s']:,.0f}",
                  _flops(r["flops_per_image"]), f"{r['memory']['peak_mb']:,}", f"{r['memory']['step_increase_mb']:,}")
    console.print(t)

    t = Table(title="4. MoE adapter: dense vs gathered (s per pass)")
    for col in ("scenario", "token rows", "experts", "dense", "gathered", "gathered / dense", "faster", "auto",
                "max |diff|"):
        t.add_column(col)
    for r in result["moe"]["rows"]:
        t.add_row(r["scenario"], f"{r['token_rows']:,}", f"{r['num_experts']} (top {r['top_k']})", _s(r["dense_s"]),
                  _s(r["gathered_s"]), _x(r["gathered_over_dense"]), r["faster"],
                  r["auto_picks"] + ("" if r["auto_is_faster"] else " [yellow](slower)[/yellow]"),
                  f"{r['max_abs_diff']:.1e}")
    console.print(t)

    ld = result["loading"]
    loaded = ", ".join(f"{r['loading_images_per_s']:,.0f} images/s with {r['num_workers']} workers "
                       f"({r['loading_over_training']}x)" for r in ld["rows"])
    console.print(f"5. loading (streaming loader): {loaded} vs training {ld['training_images_per_s']:,.0f} images/s "
                  f"(batch {ld['batch']}); bottleneck: {ld['bottleneck']}")

    fl = result["flops"]
    t = Table(title="6. FLOPs per image and achieved rate")
    for col in ("what", "batch", "FLOPs / image", "TFLOP/s", "of peak"):
        t.add_column(col)
    for r in fl["achieved"]["rows"]:
        t.add_row(r["what"], str(r["batch"]), _flops(r["flops_per_image"]), f"{r['tflops_per_s']:.4g}",
                  "-" if r["fraction_of_peak"] is None else f"{r['fraction_of_peak']:.1%}")
    console.print(t)

    lp = result["linear_probe"]
    console.print(f"7. linear probing on {lp['task']} ({lp['train_images']} train images): epoch seconds "
                  f"{lp['epoch_seconds']}, first / later = {lp['speedup']}x")

    vp = result.get("vitb_pair")
    if vp:
        console.print(f"8. random-weight ViT-B pair, batch {vp['batch']}: DynaMer / both backbones "
                      f"{_x(vp['dynamer_over_both'])}, block skipping speed-up at 0.5 "
                      f"{_x(vp['block_skip_speedup_0.5'])}, at 0.3 {_x(vp['block_skip_speedup_0.3'])}; later-blocks "
                      f"{_x(vp['later_blocks_skip_speedup_0.5'])}, {_x(vp['later_blocks_skip_speedup_0.3'])}")

    t = Table(title="ratios (time ratios per round; flops_*: the same ratios in FLOPs, the ceiling a time ratio "
                    "meets when every FLOP costs the same)")
    t.add_column("ratio")
    t.add_column("value")
    vitb = (fl.get("vitb_pair") or {}).get("ratios", {})
    if vitb:
        t.add_column("FLOPs, DINOv2 + LVM-Med ViT-B")
    for name, value in result["ratios"].items():
        t.add_row(name, "-" if value is None else f"{value:.4g}",
                  *([f"{vitb[name]:.4g}" if name in vitb else ""] if vitb else []))
    console.print(t)

    t = Table(title="targets")
    for col in ("target", "value", "limit", "holds"):
        t.add_column(col)
    for tg in result["targets"]:
        holds = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "n/a"}[tg["holds"]]
        value = "-" if tg["value"] is None else f"{tg['value']:.4g}"
        t.add_row(tg["name"], value, f"{tg['op']} {tg['limit']:g}", holds)
    console.print(t)
