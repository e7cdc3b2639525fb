"""``medvtab perf``: :func:`run_perf` runs every measurement in one process, in this order, and returns one
JSON-ready dict.

1. ``flops`` (:mod:`~medvtab.perf.flops`): FLOPs per image, counted first; the rates the timed runs achieved come
   after the timed sections.
2. ``backbones`` (:mod:`~medvtab.perf.backbones`): one backbone forward, both backbones forward, and their ratio.
3. ``skip`` (:mod:`~medvtab.perf.skipping`): DynaMer forward at each keep ratio and skip mode against both frozen
   backbones (the paper's Table 7 analogue), the adapter-only time beside the end-to-end time.
4. ``train_step`` (:mod:`~medvtab.perf.training`): one training step (forward, loss, backward, AdamW) of every
   registry method, relative to DynaMer's, and its peak memory (:mod:`~medvtab.perf.memory`).
5. ``moe`` (:mod:`~medvtab.perf.moe`): the MoE adapter computed densely and gathered per expert.
6. ``loading`` (:mod:`~medvtab.perf.training`): producing training batches against DynaMer training steps.
7. ``linear_probe`` (:mod:`~medvtab.perf.training`): ``fit`` epochs of the ``linear`` method.
8. ``vitb_pair`` (:mod:`~medvtab.perf.vitb`): the paper's ViT-B pair from random weights, timed (optional) and its
   FLOPs counted on meta tensors.

Timing: :mod:`medvtab.perf.timing` (interleaved rounds, warm-up excluded, medians and IQRs, per-round ratios).
On a GPU everything runs under bf16 autocast (the engine's setting) with PyTorch's scaled-dot-product attention
(timm's fused attention); ``compile`` wraps the timed models in ``torch.compile`` (eager where that fails, with
the reason); ``checkpointing`` recomputes backbone blocks in the backward pass. The GPU paths are written for
an H100 but have not been run on a GPU yet.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable

from medvtab.engine.allocator import keep_freed_memory
from medvtab.methods.dynamer.config import SKIP_MODES
from medvtab.perf.backbones import measure_backbones
from medvtab.perf.context import Context, PerfConfig, machine_record, make_context
from medvtab.perf.flops import achieved, flop_skip_speedups, measure_flops
from medvtab.perf.moe import measure_moe
from medvtab.perf.skipping import BLOCK_SKIP_MODES, KEEP_RATIOS, measure_skip, ratio_key
from medvtab.perf.training import measure_linear, measure_loading, measure_train_steps
from medvtab.perf.vitb import measure_vitb, vitb_flops

# Targets of the issue (ratios hold on any machine; the absolute ones only on the named GPU).
TARGETS = {
    "both_over_one": ("<=", 2.05),
    "dynamer_over_both_cpu": ("<=", 1.15),
    "dynamer_over_both_gpu": ("<=", 1.10),
    "dynamer_over_both_vitb_cpu": ("<=", 1.15),
    "block_skip_speedup_0.5": (">=", 1.5),
    "block_skip_speedup_0.3": (">=", 2.0),
    "linear_epoch_speedup": (">=", 10.0),
    "loading_over_training": (">=", 1.0),
    "gpu_inference_images_per_s": (">=", 5000.0),
    "gpu_training_images_per_s": (">=", 1500.0),
}


def _target(name: str, value, key: str | None = None, applies: bool = True,
            note: str = "applies on a GPU only") -> dict:
    op, limit = TARGETS[key or name]
    holds = None
    if applies and value is not None and value == value:
        holds = value <= limit if op == "<=" else value >= limit
    return {"name": name, "value": value, "op": op, "limit": limit, "holds": holds,
            **({} if applies else {"note": note})}


def run_perf(cfg: PerfConfig, on_progress: Callable[[str], None] = lambda m: None) -> dict:
    """Every measurement, in one process; the result is JSON-ready."""
    started = time.perf_counter()
    malloc_tuned = keep_freed_memory()  # as the CLI does for every command (see medvtab.engine.allocator)
    ctx = make_context(cfg)
    durations = {}

    def timed(name, fn):
        on_progress(name)
        t0 = time.perf_counter()
        out = fn()
        durations[name] = round(time.perf_counter() - t0, 1)
        return out

    flops = timed("flops", lambda: measure_flops(ctx))
    backbones = timed("backbones", lambda: measure_backbones(ctx))
    skip = timed("skip", lambda: measure_skip(ctx, flops))
    train = timed("train_step", lambda: measure_train_steps(ctx))
    moe = timed("moe", lambda: measure_moe(ctx))
    loading = timed("loading", lambda: measure_loading(ctx, train["dynamer_images_per_s"]))
    linear = timed("linear_probe", lambda: measure_linear(ctx))
    rates = achieved(ctx, flops, backbones, skip, train)
    vitb_timed = timed("vitb_pair", lambda: measure_vitb(ctx)) if cfg.vitb_batch else None
    vitb = None
    if cfg.vitb_flops:
        try:
            vitb = timed("vitb_flops", vitb_flops)
        except Exception as err:  # noqa: BLE001 - an extra; its absence must not sink the run
            vitb = {"error": f"{type(err).__name__}: {str(err)[:200]}"}

    ratios = headline_ratios(flops, backbones, skip, loading, linear, vitb_timed, vitb)
    result = {
        "machine": {**machine_record(ctx), "malloc_keeps_freed_memory": malloc_tuned},
        "config": config_record(ctx, durations),
        "ratios": ratios, "targets": check_targets(ratios, backbones, skip, train, ctx.device.type == "cuda"),
        "backbones": backbones, "skip": skip, "train_step": train, "moe": moe, "loading": loading,
        "flops": {"what": "FLOPs per image from torch.utils.flop_counter (matrix products, convolutions, "
                          "attention; element-wise work not counted)", "per_image": flops, "achieved": rates,
                  "vitb_pair": vitb},
        "linear_probe": linear, "vitb_pair": vitb_timed,
    }
    result["config"]["wall_seconds"] = round(time.perf_counter() - started, 1)
    return result


def _big_batch_rows(backbones: dict) -> list[dict]:
    return [r for r in backbones["rows"] if r["batch"] >= 32] or backbones["rows"][-1:]


def _skip_rows(skip: dict) -> dict:
    """The rows of the largest batch's skip table, by (skip mode, keep ratio)."""
    return {(r["skip_mode"], r["keep_ratio"]): r for r in skip["tables"][-1]["rows"]}


def headline_ratios(flops: dict, backbones: dict, skip: dict, loading: dict, linear: dict,
                    vitb_timed: dict | None, vitb_flops: dict | None = None) -> dict:
    """The medians the targets and the summary read: timed ratios at the largest batch, then FLOP ratios. The ViT-B
    pair's: ``dynamer_over_both_vitb`` (timed) beside ``flops_dynamer_over_both_vitb``."""
    row = _skip_rows(skip)
    ratios = {
        "both_over_one": _big_batch_rows(backbones)[-1]["both_over_one"]["median"],
        "dynamer_over_both": row[("adapter", 1.0)]["over_both_backbones"]["median"],
        **{ratio_key(mode, r): row[(mode, r)]["speedup_vs_keep_1"]["median"]
           for mode in SKIP_MODES for r in KEEP_RATIOS if r < 1},
        "linear_epoch_speedup": linear["speedup"],
        "loading_over_training": loading["loading_over_training"],
    }
    if vitb_timed:
        ratios["dynamer_over_both_vitb"] = vitb_timed["dynamer_over_both"]["median"]
        ratios.update({f"vitb_{key}": value["median"] for key, value in vitb_timed.items() if "_skip_speedup_" in key})
    if vitb_flops and "ratios" in vitb_flops:
        ratios["flops_dynamer_over_both_vitb"] = vitb_flops["ratios"]["dynamer_over_both"]
    ratios["flops_both_over_one"] = round(flops["both_backbones"] / flops["one_backbone"], 4)
    ratios["flops_dynamer_over_both"] = round(flops["dynamer_adapter_1.0"] / flops["both_backbones"], 4)
    ratios.update({f"flops_{key}": value for key, value in flop_skip_speedups(flops, BLOCK_SKIP_MODES).items()})
    return ratios


def check_targets(ratios: dict, backbones: dict, skip: dict, train: dict, on_gpu: bool) -> list[dict]:
    row = _skip_rows(skip)
    train_row = next((r for r in train["rows"] if r["method"] == "dynamer" and "error" not in r), None)
    targets = [_target(f"both_over_one (batch {r['batch']})", r["both_over_one"]["median"], "both_over_one")
               for r in _big_batch_rows(backbones)]
    # On a CPU the paper-size adapter is held to its target on the ViT-B layouts where those are timed: on the tiny
    # pair it is a large share of a 96-wide block, so there its ratio is reported only.
    on_vitb = "dynamer_over_both_vitb" in ratios and not on_gpu
    targets += [
        _target("dynamer_over_both" + (" (GPU)" if on_gpu else " (CPU, eager)"), ratios["dynamer_over_both"],
                "dynamer_over_both_gpu" if on_gpu else "dynamer_over_both_cpu", applies=not on_vitb,
                note="held on the ViT-B layouts (dynamer_over_both_vitb)"),
        _target("block_skip_speedup_0.5", ratios["block_skip_speedup_0.5"]),
        _target("block_skip_speedup_0.3", ratios["block_skip_speedup_0.3"]),
        *([_target("dynamer_over_both_vitb (CPU, eager)", ratios["dynamer_over_both_vitb"],
                   "dynamer_over_both_vitb_cpu")] if on_vitb else []),
        _target("linear_epoch_speedup", ratios["linear_epoch_speedup"]),
        _target("loading_over_training", ratios["loading_over_training"]),
    ]
    gpu_batch = skip["tables"][-1]["batch"]
    targets += [
        _target(f"gpu_inference_images_per_s (DynaMer, batch {gpu_batch})", row[("adapter", 1.0)]["images_per_s"],
                "gpu_inference_images_per_s", applies=on_gpu),
        _target(f"gpu_training_images_per_s (DynaMer, batch {train['batch']})",
                train_row["images_per_s"] if train_row else None, "gpu_training_images_per_s", applies=on_gpu),
    ]
    return targets


def config_record(ctx: Context, durations: dict) -> dict:
    """The run's settings as the result records them, with each section's seconds."""
    cfg = ctx.cfg
    return {
        "profile": cfg.profile, "general": cfg.general, "medical": cfg.medical,
        "backbones": {name: {k: v for k, v in asdict(b.info).items() if k in (
            "spec", "architecture", "input_size", "grid", "num_prefix_tokens", "width", "depth", "params",
            "random_init")} for name, b in (("general", ctx.general), ("medical", ctx.medical))},
        "image_shape": [3, ctx.image_size, ctx.image_size],
        "batch_sizes": {"backbones": list(cfg.batch_sizes), "skip": list(cfg.skip_batch_sizes),
                        "vitb_pair": cfg.vitb_batch,
                        "train_step": cfg.train_batch, "loading": cfg.train_batch, "flops": cfg.flops_batch,
                        "moe": list(cfg.moe_batches), "linear_probe": cfg.linear_batch},
        "rounds": {"forward": cfg.rounds, "forward_below_batch_8": cfg.small_batch_rounds,
                   "train_step": cfg.train_rounds, "moe": cfg.moe_rounds, "vitb_pair": cfg.vitb_rounds,
                   "warmup": cfg.warmup,
                   "settle": f"below batch {cfg.settle_below} each timed call follows an untimed call of the "
                             f"same case"},
        "clock": ctx.clock, "compile": ctx.compiler.record(), "checkpointing": cfg.checkpointing,
        "loading_workers": list(cfg.loading_workers), "section_seconds": durations,
    }
