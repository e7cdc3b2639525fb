"""Section ``flops``: FLOPs per image (``torch.utils.flop_counter``: matrix products and attention, not element-wise
work), and the FLOP rate the timed runs achieved; on a GPU also the fraction of the device's peak."""
from __future__ import annotations

import platform
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from medvtab.methods.dynamer.config import SKIP_MODES
from medvtab.perf.context import Context, under_inference
from medvtab.perf.skipping import KEEP_RATIOS, ratio_key

# Dense bf16 tensor-core peak (TFLOP/s, without sparsity) by device-name fragment, from the vendors' data sheets.
GPU_PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0),
                        ("L4", 121.0), ("A10", 125.0), ("V100", 125.0), ("RTX 4090", 165.0))


def count_flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def flop_skip_speedups(per_image: dict, modes) -> dict:
    """FLOPs at keep ratio 1 / FLOPs at each lower keep ratio, per skip mode, from ``dynamer_{mode}_{r}`` counts."""
    return {ratio_key(mode, r): round(per_image[f"dynamer_{mode}_1.0"] / per_image[f"dynamer_{mode}_{r}"], 4)
            for mode in modes for r in KEEP_RATIOS if r < 1}


def measure_flops(ctx: Context) -> dict:
    """FLOPs per image of one backbone, the other, both, and DynaMer at every keep ratio and skip mode."""
    b = ctx.cfg.flops_batch
    x = ctx.images(b)
    per_image = {}

    def count(fn):
        return round(count_flops(under_inference(fn, ctx.device)) / b)

    per_image["one_backbone"] = count(lambda: ctx.general(x))
    per_image["medical_backbone"] = count(lambda: ctx.medical(x))
    per_image["both_backbones"] = per_image["one_backbone"] + per_image["medical_backbone"]
    for mode in SKIP_MODES:
        for r in KEEP_RATIOS:
            model = ctx.dynamer(r, mode)
            per_image[f"dynamer_{mode}_{r}"] = count(lambda: model(x))
    return per_image


def gpu_peak_tflops(device: torch.device) -> tuple[float | None, str | None]:
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    for fragment, peak in GPU_PEAK_BF16_TFLOPS:
        if fragment in name:
            return peak, name
    return None, name


def achieved(ctx: Context, per_image: dict, backbones: dict, skip: dict, train: dict) -> dict:
    """FLOP rates of the timed runs: both backbones and DynaMer forward at the largest batch, DynaMer's training
    step (a training step counts its backward pass too)."""
    peak, name = gpu_peak_tflops(ctx.device)
    out = {"device_name": name or platform.processor() or platform.machine(),
           "peak_tflops_bf16_dense": peak, "rows": []}

    def add(what, flops_img, batch, seconds):
        rate = flops_img * batch / seconds
        out["rows"].append({"what": what, "batch": batch, "flops_per_image": flops_img,
                            "tflops_per_s": round(rate / 1e12, 4),
                            "fraction_of_peak": round(rate / 1e12 / peak, 4) if peak else None})

    top = backbones["rows"][-1]
    add("both backbones forward", per_image["both_backbones"], top["batch"], top["both_s"]["median"])
    table = skip["tables"][-1]
    for row in table["rows"]:
        if row["keep_ratio"] in (1.0, 0.5) or row["skip_mode"] != "adapter":
            add(f"dynamer forward {row['skip_mode']} keep {row['keep_ratio']}", row["flops_per_image"],
                table["batch"], row["seconds_per_batch"]["median"])
    for row in train["rows"]:
        if row.get("method") == "dynamer" and "error" not in row:
            add("dynamer training step", row["flops_per_image"], train["batch"], row["seconds_per_step"]["median"])
    return out
