"""The paper's pair, DINOv2 ViT-B/14 (196 px) + LVM-Med ViT-B (224 px), in their real layouts from random weights
(:mod:`medvtab.backbones.random_init`): timed on this device (section ``vitb_pair``), and its FLOPs per image
counted on meta tensors (``flops.vitb_pair``)."""
from __future__ import annotations

import torch

from medvtab.backbones import random_init
from medvtab.methods import build_model, make_config
from medvtab.methods.dynamer.config import SKIP_MODES
from medvtab.perf.context import NUM_CLASSES, Compiler, Context, under_inference
from medvtab.perf.flops import count_flops, flop_skip_speedups
from medvtab.perf.skipping import BLOCK_SKIP_MODES, KEEP_RATIOS, case_name, ratio_key


def measure_vitb(ctx: Context) -> dict:
    """Both frozen backbones against DynaMer at keep ratio 1 and block skipping at 0.5 and 0.3 (a few images per
    batch: on a CPU each forward of the pair costs about a second per image)."""
    batch = ctx.cfg.vitb_batch
    g = random_init.build("dinov2-vitb14", device=ctx.device)
    m = random_init.build("lvmmed-vitb", device=ctx.device)
    sub = Context(ctx.cfg, ctx.device, g, m, max(g.input_size, m.input_size), Compiler(False), clock=ctx.clock)
    x = sub.images(batch)
    cases = {"both": under_inference(lambda: (g(x), m(x)), ctx.device)}
    timed = [("adapter", 1.0)] + [(mode, r) for mode in BLOCK_SKIP_MODES for r in (0.5, 0.3)]
    for mode, r in timed:
        model = sub.dynamer(r, mode)
        cases[case_name(mode, r)] = under_inference(lambda model=model: model(x), ctx.device)
    t = sub.time(cases, ctx.cfg.vitb_rounds, settle=True)
    return {"what": "random-weight DINOv2 ViT-B/14 (196 px) + LVM-Med ViT-B (224 px) on this device: both frozen "
                    "backbones vs DynaMer (keep ratio 1; later-blocks and block skipping at 0.5 and 0.3)",
            "batch": batch, "seconds_per_batch": {k: t.summary(k) for k in cases},
            "dynamer_over_both": t.ratio("keep:1.0", "both"),
            **{ratio_key(mode, r): t.ratio("keep:1.0", case_name(mode, r)) for mode, r in timed[1:]}}


def meta_model(options: dict, general, medical):
    """DynaMer with ``options`` on backbones built on meta tensors (shapes only), in evaluation mode."""
    # building reads the backbones' normalisation constants, which meta tensors do not hold
    buffers = [(b, b.mean, b.std) for b in (general, medical)]
    for b, mean, std in buffers:
        b.mean, b.std = (torch.zeros(mean.shape, device="cpu"), torch.ones(std.shape, device="cpu"))
    try:
        return build_model("dynamer", make_config("dynamer", options), general, medical, NUM_CLASSES).eval()
    finally:
        for b, mean, std in buffers:
            b.mean, b.std = mean, std


def vitb_flops(batch: int = 1) -> dict:
    """Both frozen backbones, and DynaMer at every keep ratio and skip mode, counted on meta tensors (shapes only:
    nothing is computed, no weights are needed)."""
    general = random_init.build("dinov2-vitb14", device="meta")
    medical = random_init.build("lvmmed-vitb", device="meta")
    with torch.device("meta"):
        x = torch.empty(batch, 3, 224, 224, dtype=torch.uint8)
        out = {}

        def count(fn):
            with torch.no_grad():
                return round(count_flops(fn) / batch)

        out["one_backbone"] = count(lambda: general(x))
        out["medical_backbone"] = count(lambda: medical(x))
        out["both_backbones"] = out["one_backbone"] + out["medical_backbone"]
        for mode in SKIP_MODES:
            for r in KEEP_RATIOS:
                model = meta_model({"keep_ratio": r, "skip_mode": mode}, general, medical)
                out[f"dynamer_{mode}_{r}"] = count(lambda: model(x))
    ratios = {"both_over_one": round(out["both_backbones"] / out["one_backbone"], 4),
              "dynamer_over_both": round(out["dynamer_adapter_1.0"] / out["both_backbones"], 4),
              **flop_skip_speedups(out, SKIP_MODES)}
    return {"what": "FLOPs per image of the DINOv2 ViT-B/14 + LVM-Med ViT-B pair (layouts only, meta tensors)",
            "per_image": out, "ratios": ratios}
