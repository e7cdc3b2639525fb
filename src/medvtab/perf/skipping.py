"""Section ``skip``: DynaMer inference at keep ratios 1, 0.5, 0.3, 0.1 in each skip mode against both frozen
backbones (the paper's Table 7 analogue), the time inside the DynaMer layers alone beside the end-to-end time."""
from __future__ import annotations

from typing import Callable

import torch

from medvtab.methods.dynamer.config import SKIP_MODES
from medvtab.perf.context import Context, under_inference
from medvtab.perf.timing import CLOCKS, summary, synchronizer

KEEP_RATIOS = (1.0, 0.5, 0.3, 0.1)
BLOCK_SKIP_MODES = tuple(m for m in SKIP_MODES if m != "adapter")  # skipped tokens also bypass backbone blocks


def case_name(mode: str, r: float) -> str:
    return "keep:1.0" if r == 1.0 else f"{mode}:{r}"  # at keep ratio 1 every mode runs the same computation


def ratio_key(mode: str, r: float) -> str:
    return f"{mode.replace('-', '_')}_skip_speedup_{r}"


class AdapterClock:
    """Time spent inside a DynaMer model's layers, through forward hooks around each layer; ``calls`` holds one
    total per forward. On a GPU every hook synchronises (so it runs in a pass of its own, not in the timed
    rounds); on a CPU the hooks cost microseconds and ride along in the timed rounds."""

    def __init__(self, model, device: torch.device, clock: str):
        self.sync, self.read = synchronizer(device), CLOCKS[clock]
        self.calls: list[float] = []
        self._spent, self._starts = 0.0, {}
        self._handles = []
        for layer in model.runner.hooks.values():
            self._handles.append(layer.register_forward_pre_hook(self._pre))
            self._handles.append(layer.register_forward_hook(self._post))

    def _pre(self, module, _args):
        self.sync()
        self._starts[id(module)] = self.read()

    def _post(self, module, _args, _out):
        self.sync()
        self._spent += self.read() - self._starts.pop(id(module))

    def wrap(self, fn: Callable[[], object]) -> Callable[[], object]:
        def run():
            self._spent = 0.0
            out = fn()
            self.calls.append(self._spent)
            return out
        return run

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def measure_skip(ctx: Context, flops: dict) -> dict:
    """``flops``: FLOPs per image from :func:`medvtab.perf.flops.measure_flops`, set beside each row."""
    models = {(mode, r): ctx.dynamer(r, mode) for mode in SKIP_MODES for r in KEEP_RATIOS}
    g, m = ctx.general, ctx.medical
    tables = []
    # Adapter-only time: hooks ride along in the timed calls on a CPU; on a GPU (they synchronise) and under
    # torch.compile (hooks inside a compiled module break its graph) they time the eager model in a pass of its own.
    separate_pass = ctx.device.type == "cuda" or ctx.compiler.enabled
    for batch in ctx.cfg.skip_batch_sizes:
        x = ctx.images(batch)
        cases = {"both": under_inference(lambda: (g(x), m(x)), ctx.device)}
        clocks = {}
        for (mode, r), model in models.items():
            key = case_name(mode, r)
            if key in cases:
                continue
            fn = ctx.compiled(f"dynamer {mode} {r}", model)
            case = under_inference(lambda fn=fn: fn(x), ctx.device)
            if not separate_pass:
                clocks[key] = AdapterClock(model, ctx.device, ctx.clock)
                case = clocks[key].wrap(case)
            cases[key] = case
        try:
            t = ctx.time(cases, ctx.rounds(batch), settle=ctx.settle(batch))
        finally:
            for c in clocks.values():
                c.remove()
        adapters = {}
        for (mode, r), model in models.items():
            key = case_name(mode, r)
            if key in adapters:
                continue
            if separate_pass:
                clocks[key] = AdapterClock(model, ctx.device, ctx.clock)
                run = clocks[key].wrap(under_inference(lambda model=model: model(x), ctx.device))
                for _ in range(ctx.cfg.adapter_calls + 1):
                    run()
                clocks[key].remove()
                adapters[key] = summary(clocks[key].calls[1:])
            else:  # every call of the timed phase (warm-up rounds excluded)
                adapters[key] = summary(clocks[key].calls[ctx.cfg.warmup:])
        rows = []
        for (mode, r), model in models.items():
            key = case_name(mode, r)
            adapter = adapters[key]
            f_img = flops.get(f"dynamer_{mode}_{r}")
            f_one = flops.get(f"dynamer_{mode}_1.0")
            rows.append({
                "skip_mode": mode, "keep_ratio": r, "seconds_per_batch": t.summary(key),
                "adapter_seconds_per_batch": adapter,
                "adapter_fraction": round(adapter["median"] / t.median(key), 4),
                "speedup_vs_keep_1": t.ratio("keep:1.0", key),
                "over_both_backbones": t.ratio(key, "both"),
                "images_per_s": round(batch / t.median(key), 1),
                "flops_per_image": f_img,
                "flops_speedup_vs_keep_1": round(f_one / f_img, 4) if f_img and f_one else None,
            })
        tables.append({"batch": batch, "both_backbones_seconds_per_batch": t.summary("both"), "rows": rows})
    return {"what": "DynaMer inference (default options, 2-class head) at each keep ratio and skip mode against "
                    "both frozen backbones; keep ratio 1 is one case for every mode (the same computation: "
                    "no skipping router); adapter_seconds: time inside the DynaMer layers alone (timing hooks "
                    "around each layer: in the timed calls on a CPU, in a pass of their own on a GPU or with "
                    "--compile); speed-ups: time at keep ratio 1 / time at the ratio, per round",
            "paper_table7_seconds_per_batch": {"1.0": 0.165, "0.5": 0.086, "0.3": 0.057, "0.1": 0.017},
            "tables": tables}
