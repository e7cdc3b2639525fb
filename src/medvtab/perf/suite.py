"""The measurements of ``medvtab perf``; :func:`run_perf` runs them all in one process and returns one dict.

1. ``backbones``: one backbone forward, both backbones forward, and their ratio, per batch size.
2. ``skip``: DynaMer forward at keep ratios 1, 0.5, 0.3, 0.1 in each skip mode, against both frozen backbones
   (the paper's Table 7 analogue), the adapter-only time (the DynaMer layers alone) beside the end-to-end time.
3. ``train_step``: one training step (forward, loss, backward, AdamW) of every registry method, relative to
   DynaMer's, and its peak memory (``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the resident set
   size, sampled every half millisecond during the step).
4. ``moe``: the MoE adapter computed densely and gathered per expert, their outputs compared, and which one
   ``auto`` picks for each size (see :class:`medvtab.methods.dynamer.SharedExperts`).
5. ``loading``: producing training batches (the engine's path: in-memory uint8 images, random order,
   ``random_shift``; on a GPU pinned storage and non-blocking copies) against DynaMer training steps.
6. ``flops``: FLOPs per image (``torch.utils.flop_counter``: matrix products and attention, not element-wise
   work), and the FLOP rate achieved by the timed runs; on a GPU also the fraction of the device's peak.
7. ``linear_probe``: ``fit`` epochs of the ``linear`` method on a bundled task; the first epoch computes the
   backbone features, later ones train the head on the cache.

Timing: :mod:`medvtab.perf.timing` (interleaved rounds, warm-up excluded, medians and IQRs, per-round ratios).
On a GPU everything runs under bf16 autocast (the engine's setting) with PyTorch's scaled-dot-product attention
(timm's fused attention); ``compile`` wraps the timed models in ``torch.compile`` (eager where that fails, with
the reason); ``checkpointing`` recomputes backbone blocks in the backward pass. The GPU paths are written for
an H100 but have not been run on a GPU yet.
"""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from medvtab.engine.acceleration import compile_with_fallback, keep_freed_memory, set_grad_checkpointing
from medvtab.errors import MedvtabError
from medvtab.methods.dynamer import SKIP_MODES
from medvtab.perf.timing import interleaved, summary

KEEP_RATIOS = (1.0, 0.5, 0.3, 0.1)
BLOCK_SKIP_MODES = tuple(m for m in SKIP_MODES if m != "adapter")  # skipped tokens also bypass backbone blocks
NUM_CLASSES = 2

# Dense bf16 tensor-core peak (TFLOP/s, without sparsity) by device-name fragment, from the vendors' data sheets.
GPU_PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0),
                        ("L4", 121.0), ("A10", 125.0), ("V100", 125.0), ("RTX 4090", 165.0))

# Targets of the issue (ratios hold on any machine; the absolute ones only on the named GPU).
TARGETS = {
    "both_over_one": ("<=", 2.05),
    "dynamer_over_both_cpu": ("<=", 1.15),
    "dynamer_over_both_gpu": ("<=", 1.10),
    "block_skip_speedup_0.5": (">=", 1.5),
    "block_skip_speedup_0.3": (">=", 2.0),
    "linear_epoch_speedup": (">=", 10.0),
    "loading_over_training": (">=", 1.0),
    "gpu_inference_images_per_s": (">=", 5000.0),
    "gpu_training_images_per_s": (">=", 1500.0),
}


@dataclass
class PerfConfig:
    general: str = "tiny-general"
    medical: str = "tiny-medical"
    device: str = "cpu"
    threads: int | None = None          # torch CPU threads (None: leave torch's setting)
    profile: str = "default"
    batch_sizes: tuple[int, ...] = (1, 32, 256)        # item 1
    skip_batch_sizes: tuple[int, ...] = (32, 256)      # item 2
    train_batch: int = 32                               # items 3 and 5
    rounds: int = 9
    train_rounds: int = 5
    warmup: int = 1
    small_batch_rounds: int = 21                        # batch sizes below 8: cheap, noisier
    methods: tuple[str, ...] | None = None              # None: every registry method
    moe_batches: tuple[int, ...] = (32, 256)            # token rows = batch x merged tokens per stream
    moe_experts: tuple[int, ...] = (4, 8, 16)
    moe_rounds: int = 7
    loading_images: int = 4096
    flops_batch: int = 2
    linear_task: str = "pneumoniamnist"
    linear_train_size: int | None = 2000
    linear_epochs: int = 4
    linear_batch: int = 64
    compile: bool = False
    checkpointing: bool = False
    clock: str = "auto"                                 # see medvtab.perf.timing.pick_clock
    adapter_calls: int = 3                              # forwards of the adapter-only pass (GPU)
    settle_below: int = 128                             # settling calls for batches below this
    vitb_flops: bool = True                             # FLOPs of the DINOv2 + LVM-Med ViT-B layouts (meta tensors)
    vitb_batch: int | None = 1                          # also time the random ViT-B pair at this batch (None: no)
    vitb_rounds: int = 5

    @classmethod
    def for_profile(cls, device: str, quick: bool, **overrides) -> "PerfConfig":
        """``quick``: a few seconds on a laptop CPU (tests, smoke runs); else the CPU defaults above, or on a GPU
        batch sizes 1, 32, 256 everywhere and more rounds."""
        base: dict = {"device": device}
        if quick:
            base.update(profile="quick", batch_sizes=(2,), skip_batch_sizes=(4,), train_batch=4, rounds=2,
                        train_rounds=1, warmup=1, small_batch_rounds=2, methods=("linear", "lora", "dynamer"),
                        moe_batches=(4,), moe_experts=(4, 8), moe_rounds=2, loading_images=64,
                        linear_train_size=64, linear_epochs=2, linear_batch=32, adapter_calls=2, vitb_flops=False,
                        vitb_batch=None)
        elif torch.device(device).type == "cuda":
            base.update(profile="gpu", batch_sizes=(1, 32, 256), skip_batch_sizes=(32, 256), train_batch=256,
                        rounds=20, train_rounds=10, warmup=3, small_batch_rounds=50, moe_batches=(32, 256),
                        loading_images=16384, vitb_batch=None)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


# --- helpers ----------------------------------------------------------------------------------------------

def autocast(device: torch.device):
    """The engine's precision: bf16 autocast on a GPU, float32 on a CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def dtype_name(device: torch.device) -> str:
    return "bfloat16 autocast" if device.type == "cuda" else "float32"


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class RssSampler:
    """Peak resident set size while the block runs, sampled every ``interval`` seconds (Linux /proc); elsewhere
    the process's lifetime peak (``getrusage``)."""

    def __init__(self, interval: float = 0.0005):
        self.interval = interval
        self.start = self.peak = 0
        self.kind = "rss_sampled"
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            rss = _rss_bytes()
            if rss is not None and rss > self.peak:
                self.peak = rss
            time.sleep(self.interval)

    def __enter__(self):
        rss = _rss_bytes()
        if rss is None:
            self.kind = "ru_maxrss_lifetime"
            self.start = 0
            return self
        self.start = self.peak = rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.kind == "ru_maxrss_lifetime":
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            return False
        self._stop.set()
        self._thread.join()
        rss = _rss_bytes()
        if rss is not None:
            self.peak = max(self.peak, rss)
        return False


def _mb(n: float) -> float:
    return round(n / 2 ** 20, 1)


def gpu_peak_tflops(device: torch.device) -> tuple[float | None, str | None]:
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    for fragment, peak in GPU_PEAK_BF16_TFLOPS:
        if fragment in name:
            return peak, name
    return None, name


def count_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


class Compiler:
    """``torch.compile`` with a fallback (:func:`medvtab.engine.acceleration.compile_with_fallback`): a module whose
    compiled form fails its first call runs eagerly, and the reason is kept."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.fallbacks: list[str] = []
        self.compiled = 0

    def __call__(self, name: str, module: torch.nn.Module, probe: Callable[[Callable], object]) -> Callable:
        if not self.enabled:
            return module
        fn, reason = compile_with_fallback(module, probe)
        if reason is None:
            self.compiled += 1
        else:
            self.fallbacks.append(f"{name}: {reason}")
        return fn

    def record(self) -> dict:
        return {"enabled": self.enabled, "compiled": self.compiled, "fallbacks": self.fallbacks}


@dataclass
class Context:
    cfg: PerfConfig
    device: torch.device
    general: torch.nn.Module
    medical: torch.nn.Module
    image_size: int
    compiler: Compiler
    clock: str = "wall"
    notes: list[str] = field(default_factory=list)

    def time(self, cases: dict, rounds: int, settle: bool = True, warmup: int | None = None):
        return interleaved(cases, rounds=rounds, warmup=self.cfg.warmup if warmup is None else warmup,
                           settle=settle, device=self.device, clock=self.clock)

    def images(self, batch: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(0, 256, (batch, 3, self.image_size, self.image_size), dtype=torch.uint8, generator=g)
        return x.to(self.device)

    def labels(self, batch: int) -> torch.Tensor:
        return (torch.arange(batch) % NUM_CLASSES).to(self.device)

    def rounds(self, batch: int) -> int:
        return self.cfg.small_batch_rounds if batch < 8 else self.cfg.rounds

    def settle(self, batch: int) -> bool:
        """Settling calls (see :func:`medvtab.perf.timing.interleaved`) below ``settle_below`` images per batch,
        where the allocator's state is a visible part of a call; large batches skip them (half the time)."""
        return batch < self.cfg.settle_below


def build(name: str, ctx: Context, options: dict | None = None, seed: int = 0):
    from medvtab.methods import build_model, make_config, resolve_backbone_specs

    config = make_config(name, options or {})
    specs = resolve_backbone_specs(name, config, ctx.cfg.general, ctx.cfg.medical)
    pool = {ctx.cfg.general: ctx.general, ctx.cfg.medical: ctx.medical}
    backbones = [pool[s] for s in specs]
    torch.manual_seed(seed)
    model = build_model(name, config, backbones[0], backbones[1] if len(backbones) > 1 else None, NUM_CLASSES)
    return model.to(ctx.device)


def dynamer(ctx: Context, keep_ratio: float = 1.0, skip_mode: str = "adapter"):
    return build("dynamer", ctx, {"keep_ratio": keep_ratio, "skip_mode": skip_mode}).eval()


def _inference(fn: Callable, device: torch.device) -> Callable[[], object]:
    def run():
        with torch.inference_mode(), autocast(device):
            return fn()
    return run


# --- 1. backbones -------------------------------------------------------------------------------------------

def measure_backbones(ctx: Context) -> dict:
    g = ctx.compiler("general backbone", ctx.general, lambda f: _inference(lambda: f(ctx.images(2)), ctx.device)())
    m = ctx.compiler("medical backbone", ctx.medical, lambda f: _inference(lambda: f(ctx.images(2)), ctx.device)())
    rows = []
    for batch in ctx.cfg.batch_sizes:
        x = ctx.images(batch)
        cases = {"one": _inference(lambda: g(x), ctx.device),
                 "both": _inference(lambda: (g(x), m(x)), ctx.device)}
        t = ctx.time(cases, ctx.rounds(batch), settle=ctx.settle(batch))
        rows.append({"batch": batch, "one_s": t.summary("one"), "both_s": t.summary("both"),
                     "both_over_one": t.ratio("both", "one"),
                     "images_per_s_one": round(batch / t.median("one"), 1),
                     "images_per_s_both": round(batch / t.median("both"), 1)})
    return {"what": "one backbone forward (the general one) vs both backbones forward, each the backbone's own "
                    "forward (preprocess, embed, blocks, summary), inference mode",
            "rows": rows}


# --- 2. DynaMer keep ratios (Table 7 analogue) ---------------------------------------------------------------

class AdapterClock:
    """Time spent inside a DynaMer model's layers, through forward hooks around each layer; ``calls`` holds one
    total per forward. On a GPU every hook synchronises (so it runs in a pass of its own, not in the timed
    rounds); on a CPU the hooks cost microseconds and ride along in the timed rounds."""

    def __init__(self, model, device: torch.device, clock: str):
        from medvtab.perf.timing import CLOCKS, synchronizer

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


def _case(mode: str, r: float) -> str:
    return "keep:1.0" if r == 1.0 else f"{mode}:{r}"  # at keep ratio 1 every mode runs the same computation


def _ratio_key(mode: str, r: float) -> str:
    return f"{mode.replace('-', '_')}_skip_speedup_{r}"


def _flop_skip_speedups(per_image: dict, modes) -> dict:
    """FLOPs at keep ratio 1 / FLOPs at each lower keep ratio, per skip mode, from ``dynamer_{mode}_{r}`` counts."""
    return {_ratio_key(mode, r): round(per_image[f"dynamer_{mode}_1.0"] / per_image[f"dynamer_{mode}_{r}"], 4)
            for mode in modes for r in KEEP_RATIOS if r < 1}


def measure_skip(ctx: Context, flops: dict) -> dict:
    models = {(mode, r): dynamer(ctx, r, mode) for mode in SKIP_MODES for r in KEEP_RATIOS}
    g, m = ctx.general, ctx.medical
    tables = []
    # Adapter-only time: hooks ride along in the timed calls on a CPU; on a GPU (they synchronise) and under
    # torch.compile (hooks inside a compiled module break its graph) they time the eager model in a pass of its own.
    separate_pass = ctx.device.type == "cuda" or ctx.compiler.enabled
    for batch in ctx.cfg.skip_batch_sizes:
        x = ctx.images(batch)
        cases = {"both": _inference(lambda: (g(x), m(x)), ctx.device)}
        clocks = {}
        for (mode, r), model in models.items():
            key = _case(mode, r)
            if key in cases:
                continue
            fn = ctx.compiler(f"dynamer {mode} {r}", model,
                              lambda f: _inference(lambda: f(ctx.images(2)), ctx.device)())
            case = _inference(lambda fn=fn: fn(x), ctx.device)
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
            key = _case(mode, r)
            if key in adapters:
                continue
            if separate_pass:
                clocks[key] = AdapterClock(model, ctx.device, ctx.clock)
                run = clocks[key].wrap(_inference(lambda model=model: model(x), ctx.device))
                for _ in range(ctx.cfg.adapter_calls + 1):
                    run()
                clocks[key].remove()
                adapters[key] = summary(clocks[key].calls[1:])
            else:  # every call of the timed phase (warm-up rounds excluded)
                adapters[key] = summary(clocks[key].calls[ctx.cfg.warmup:])
        rows = []
        for (mode, r), model in models.items():
            key = _case(mode, r)
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


# --- 3. training steps ----------------------------------------------------------------------------------------

def _train_step(model, images, labels, device: torch.device) -> Callable[[], None]:
    from medvtab.engine.evaluate import task_loss

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    if model.caches_features:  # the engine's step for a feature-caching method: the head on cached features
        with torch.inference_mode(), autocast(device):
            features = model.features(images).float()
        features = features.clone()

        def step():
            with autocast(device):
                loss = task_loss(model.logits_from_features(features).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step

    def step():
        with autocast(device):
            loss = task_loss(model(images).float(), labels)
            aux = model.auxiliary_loss()
            if aux is not None:
                loss = loss + aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def _peak_memory(step: Callable[[], None], device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"kind": "cuda_max_memory_allocated", "peak_mb": _mb(peak), "step_increase_mb": _mb(peak - before)}
    _release_free_memory()
    with RssSampler() as rss:
        step()
    return {"kind": rss.kind, "peak_mb": _mb(rss.peak), "step_increase_mb": _mb(rss.peak - rss.start)}


def _release_free_memory() -> None:
    """Hand the C allocator's free memory back to the system (glibc ``malloc_trim``), so the resident set size
    grows with what the next step allocates instead of reusing what earlier steps freed."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_train_steps(ctx: Context) -> dict:
    from medvtab.methods import get_method, method_names

    names = list(ctx.cfg.methods or method_names())
    if "dynamer" not in names:
        names.append("dynamer")
    batch = ctx.cfg.train_batch
    x, y = ctx.images(batch), ctx.labels(batch)
    steps, errors, flops, models = {}, {}, {}, {}
    for name in names:
        try:
            get_method(name)
            model = build(name, ctx)
            set_grad_checkpointing(model, ctx.cfg.checkpointing)
            if ctx.compiler.enabled and not model.caches_features:
                model.forward = ctx.compiler(f"train {name}", model.forward,
                                             lambda f: _inference(lambda: f(ctx.images(2)), ctx.device)())
            flops[name] = count_flops(_train_step(model, ctx.images(ctx.cfg.flops_batch),
                                                  ctx.labels(ctx.cfg.flops_batch), ctx.device))
            step = _train_step(model, x, y, ctx.device)
            step()  # at full batch size: a method that cannot run (out of memory) drops out here, with its reason
            models[name], steps[name] = model, step
        except (MedvtabError, RuntimeError, ValueError) as err:  # incl. torch.OutOfMemoryError
            errors[name] = f"{type(err).__name__}: {str(err)[:300]}"
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
    t = ctx.time(steps, ctx.cfg.train_rounds, settle=False)
    memory = {name: _peak_memory(step, ctx.device) for name, step in steps.items()}
    rows = []
    for name in names:
        if name in errors:
            rows.append({"method": name, "error": errors[name]})
            continue
        model = models[name]
        rows.append({
            "method": name, "family": get_method(name).family,
            "seconds_per_step": t.summary(name),
            "relative_to_dynamer": t.ratio(name, "dynamer"),
            "images_per_s": round(batch / t.median(name), 1),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "flops_per_image": round(flops[name] / ctx.cfg.flops_batch),
            "memory": memory[name],
            "step": "head on cached features (the engine's step after the first epoch)" if model.caches_features
                    else "forward, loss (+ auxiliary), backward, AdamW",
        })
    dynamer_ips = next(r["images_per_s"] for r in rows if r["method"] == "dynamer" and "error" not in r)
    return {"what": f"one training step at batch {batch}, every method with its default options, interleaved; "
                    f"relative_to_dynamer: step time / DynaMer's step time, per round",
            "batch": batch, "checkpointing": ctx.cfg.checkpointing, "dynamer_images_per_s": dynamer_ips,
            "rows": rows}


# --- 4. MoE: dense vs gathered ---------------------------------------------------------------------------------

def measure_moe(ctx: Context) -> dict:
    from medvtab.backbones import check_alignment
    from medvtab.methods import make_config
    from medvtab.methods.dynamer import SharedExperts

    cfg = make_config("dynamer", {})
    gi, mi = ctx.general.info, ctx.medical.info
    tokens = check_alignment(gi, mi).merged_tokens
    in_dim, out_dim = gi.width + mi.width, max(gi.width, mi.width)
    bottleneck = cfg.widths(out_dim)[0]
    rows = []
    for batch in ctx.cfg.moe_batches:
        for n in ctx.cfg.moe_experts:
            k = min(cfg.top_k, n)
            gen = torch.Generator().manual_seed(n)
            torch.manual_seed(n)
            experts = SharedExperts(in_dim, bottleneck, out_dim, n, k).to(ctx.device)
            with torch.no_grad():
                experts.up.weight.normal_(std=0.02)
                experts.up_bias.normal_(std=0.02)
            count = batch * tokens
            pair = torch.randn(count, in_dim, generator=gen).to(ctx.device)
            logits = torch.randn(2, count, n, generator=gen).to(ctx.device)
            top_val, top_idx = logits.topk(k, dim=-1)
            top_w = top_val.softmax(-1)
            weights = torch.zeros_like(logits).scatter(-1, top_idx, top_w)

            def dense(s=0):
                return experts.mix_folded(experts.hidden(pair), weights[s])

            def dense_shared():
                hidden = experts.hidden(pair)
                return [experts.mix_folded(hidden, weights[s]) for s in (0, 1)]

            def gathered(s=0):
                return experts.gathered(pair, top_idx[s], top_w[s])

            with torch.inference_mode(), autocast(ctx.device):
                ref = experts.mix(experts.hidden(pair), weights[0]).float()
                diff = max((dense().float() - ref).abs().max().item(), (gathered().float() - ref).abs().max().item())
                scale = ref.abs().max().item()
            cases = {"dense": _inference(dense, ctx.device), "gathered": _inference(gathered, ctx.device),
                     "dense_shared": _inference(dense_shared, ctx.device),
                     "gathered_both": _inference(lambda: [gathered(0), gathered(1)], ctx.device)}
            t = ctx.time(cases, ctx.cfg.moe_rounds)
            for scenario, d, gname in (("per_stream", "dense", "gathered"),
                                       ("shared", "dense_shared", "gathered_both")):
                faster = "dense" if t.median(d) <= t.median(gname) else "gathered"
                auto = experts.choose(count, ctx.device, shared=scenario == "shared")
                rows.append({
                    "scenario": scenario, "token_rows": count, "num_experts": n, "top_k": k,
                    "dense_s": t.summary(d), "gathered_s": t.summary(gname),
                    "gathered_over_dense": t.ratio(gname, d), "faster": faster, "auto_picks": auto,
                    "auto_is_faster": auto == faster, "max_abs_diff": diff,
                    "relative_diff": diff / scale if scale else 0.0, "equal_output": diff <= 1e-4 * max(1.0, scale),
                })
    return {"what": "the MoE adapter of one DynaMer layer: dense (all experts, two fused products, unselected "
                    "weighted 0) vs gathered (each token through its top-k experts only); per_stream: one stream's "
                    "pass over its rows (a skipping router's kept tokens), shared: both streams at keep ratio 1 "
                    "(dense computes the hidden activations once for both); outputs compared with the reference mix",
            "in_dim": in_dim, "out_dim": out_dim, "bottleneck": bottleneck, "merged_tokens": tokens,
            "rows": rows}


# --- 5. data loading vs training -------------------------------------------------------------------------------

def measure_loading(ctx: Context, dynamer_train_ips: float) -> dict:
    from medvtab.engine.loop import random_shift

    n, batch = ctx.cfg.loading_images, ctx.cfg.train_batch
    source_size = 28 if ctx.image_size <= 32 else ctx.image_size
    gen = torch.Generator().manual_seed(0)
    train_x = torch.randint(0, 256, (n, 1 if source_size == 28 else 3, source_size, source_size),
                            dtype=torch.uint8, generator=gen)
    train_y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    if ctx.device.type == "cuda":
        train_x, train_y = train_x.pin_memory(), train_y.pin_memory()
    steps = max(1, n // batch)

    def epoch():
        order = torch.randperm(n, generator=gen)
        for i in range(steps):
            idx = order[i * batch:(i + 1) * batch]
            x = random_shift(train_x[idx], gen)  # a fresh (pageable) tensor, as in the engine
            x.to(ctx.device, non_blocking=True)
            train_y[idx].to(ctx.device, non_blocking=True)

    t = ctx.time({"epoch": epoch}, max(2, ctx.cfg.train_rounds), settle=False, warmup=1)
    loading_ips = steps * batch / t.median("epoch")
    ratio = loading_ips / dynamer_train_ips if dynamer_train_ips else float("nan")
    return {"what": "producing training batches as the engine does (in-memory uint8 images, random order, "
                    "random_shift augmentation, labels; on a GPU the stored images pinned and each batch copied "
                    "without blocking), single process, against DynaMer training steps at the same batch size "
                    "(section train_step)",
            "batch": batch, "image_shape": list(train_x.shape[1:]), "loading_images_per_s": round(loading_ips, 1),
            "training_images_per_s": dynamer_train_ips, "loading_over_training": round(ratio, 3),
            "loading_fraction_of_step": round(1 / (1 + ratio), 4) if ratio == ratio else None,
            "bottleneck": "loading" if ratio < 1 else "training"}


# --- 6. FLOPs ------------------------------------------------------------------------------------------------

def measure_flops(ctx: Context) -> dict:
    b = ctx.cfg.flops_batch
    x = ctx.images(b)
    per_image = {}

    def count(fn):
        return round(count_flops(_inference(fn, ctx.device)) / b)

    per_image["one_backbone"] = count(lambda: ctx.general(x))
    per_image["medical_backbone"] = count(lambda: ctx.medical(x))
    per_image["both_backbones"] = per_image["one_backbone"] + per_image["medical_backbone"]
    for mode in SKIP_MODES:
        for r in KEEP_RATIOS:
            model = dynamer(ctx, r, mode)
            per_image[f"dynamer_{mode}_{r}"] = count(lambda: model(x))
    return per_image


RANDOM_LAYOUTS = ("dinov2-vits14", "dinov2-vitb14", "dinov2-vitl14", "lvmmed-vitb")


def random_backbone(name: str, device: str | torch.device = "cpu", seed: int = 0):
    """A backbone in a real checkpoint layout from random weights (speed does not depend on the values): the
    ``random:NAME`` specs of ``medvtab perf``, e.g. ``random:dinov2-vitb14`` + ``random:lvmmed-vitb`` for the
    paper's ViT-B pair on a GPU without its checkpoints. Each at its default input size (DINOv2 196 px, LVM-Med
    224 px: both a 14x14 grid)."""
    import timm
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torch import nn

    from medvtab.backbones import dinov2, lvmmed
    from medvtab.backbones.sam import SamBackbone
    from medvtab.backbones.vit import ViTBackbone

    if name not in RANDOM_LAYOUTS:
        raise MedvtabError(f"unknown random layout 'random:{name}'; expected one of: "
                           + ", ".join(f"random:{n}" for n in RANDOM_LAYOUTS))
    norm = dict(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, random_init=True)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        if name.startswith("dinov2"):
            size = dinov2.DEFAULT_INPUT_SIZE
            model = timm.create_model(dinov2.VARIANTS[name], pretrained=False, num_classes=0, img_size=size)
            return ViTBackbone(model, spec=f"random:{name}", input_size=size, **norm)
        size = lvmmed.DEFAULT_INPUT_SIZE
        model = timm.create_model("samvit_base_patch16", pretrained=False, num_classes=0, img_size=size)
        model.neck = nn.Identity()
        return SamBackbone(model, spec=f"random:{name}", input_size=size, **norm)


def perf_backbone(spec: str, device: torch.device):
    """A registry spec (:func:`medvtab.backbones.load_backbone`), or ``random:NAME`` (:func:`random_backbone`)."""
    from medvtab.backbones import load_backbone

    if spec.startswith("random:"):
        return random_backbone(spec.removeprefix("random:"), device)
    return load_backbone(spec).to(device)


def measure_vitb(ctx: Context) -> dict:
    """The paper's pair on this device: DINOv2 ViT-B/14 + LVM-Med ViT-B in their real layouts from random weights,
    both frozen backbones against DynaMer at keep ratio 1 and block skipping at 0.5 and 0.3 (a few images per
    batch: on a CPU each forward of the pair costs about a second per image)."""
    batch = ctx.cfg.vitb_batch
    g, m = random_backbone("dinov2-vitb14", ctx.device), random_backbone("lvmmed-vitb", ctx.device)
    sub = Context(ctx.cfg, ctx.device, g, m, max(g.input_size, m.input_size), Compiler(False), clock=ctx.clock)
    x = sub.images(batch)
    cases = {"both": _inference(lambda: (g(x), m(x)), ctx.device)}
    timed = [("adapter", 1.0)] + [(mode, r) for mode in BLOCK_SKIP_MODES for r in (0.5, 0.3)]
    for mode, r in timed:
        model = dynamer(sub, r, mode)
        cases[_case(mode, r)] = _inference(lambda model=model: model(x), ctx.device)
    t = sub.time(cases, ctx.cfg.vitb_rounds, settle=True)
    return {"what": "random-weight DINOv2 ViT-B/14 (196 px) + LVM-Med ViT-B (224 px) on this device: both frozen "
                    "backbones vs DynaMer (keep ratio 1; later-blocks and block skipping at 0.5 and 0.3)",
            "batch": batch, "seconds_per_batch": {k: t.summary(k) for k in cases},
            "dynamer_over_both": t.ratio("keep:1.0", "both"),
            **{_ratio_key(mode, r): t.ratio("keep:1.0", _case(mode, r)) for mode, r in timed[1:]}}


def vitb_flops(batch: int = 1) -> dict:
    """FLOPs per image of the DINOv2 ViT-B/14 (196 px) + LVM-Med ViT-B (SAM, 224 px) pair: both frozen
    backbones, and DynaMer at every keep ratio and skip mode, counted on meta tensors (shapes only: nothing is
    computed, no weights are needed)."""
    from medvtab.methods import build_model, make_config

    general, medical = random_backbone("dinov2-vitb14", "meta"), random_backbone("lvmmed-vitb", "meta")
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
                # building reads the backbones' normalisation constants, which meta tensors do not hold
                buffers = [(b, b.mean, b.std) for b in (general, medical)]
                for b, mean, std in buffers:
                    b.mean, b.std = (torch.zeros(mean.shape, device="cpu"), torch.ones(std.shape, device="cpu"))
                try:
                    model = build_model("dynamer", make_config("dynamer", {"keep_ratio": r, "skip_mode": mode}),
                                        general, medical, NUM_CLASSES).eval()
                finally:
                    for b, mean, std in buffers:
                        b.mean, b.std = mean, std
                out[f"dynamer_{mode}_{r}"] = count(lambda: model(x))
    ratios = {"both_over_one": round(out["both_backbones"] / out["one_backbone"], 4),
              "dynamer_over_both": round(out["dynamer_adapter_1.0"] / out["both_backbones"], 4),
              **_flop_skip_speedups(out, SKIP_MODES)}
    return {"what": "FLOPs per image of the DINOv2 ViT-B/14 + LVM-Med ViT-B pair (layouts only, meta tensors)",
            "per_image": out, "ratios": ratios}


def achieved(ctx: Context, per_image: dict, backbones: dict, skip: dict, train: dict) -> dict:
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


# --- 7. linear probing epochs ----------------------------------------------------------------------------------

def measure_linear(ctx: Context) -> dict:
    from medvtab.data.tasks import load_task, subsample_train
    from medvtab.engine.loop import TrainConfig, fit, seed_everything
    from medvtab.methods import get_method

    cfg = ctx.cfg
    data = subsample_train(load_task(cfg.linear_task, seed=0, image_size=ctx.image_size), cfg.linear_train_size, 0)
    seed_everything(0)
    model = build("linear", ctx)
    train_cfg = TrainConfig(epochs=cfg.linear_epochs, batch_size=cfg.linear_batch, lr=get_method("linear").default_lr,
                            device=str(ctx.device), patience=cfg.linear_epochs + 1, seed=0)
    result = fit(model, data.train, data.val, train_cfg)
    cumulative = [h["seconds"] for h in result.history]
    epochs = [round(b - a, 4) for a, b in zip([0.0] + cumulative[:-1], cumulative)]
    median_later = statistics.median(epochs[1:]) if len(epochs) > 1 else float("nan")
    return {"what": "fit() of the linear method: epoch 1 computes and caches the backbone features (train and "
                    "validation), later epochs train the head on the cache; epoch seconds from the fit history",
            "task": cfg.linear_task, "train_images": len(data.train), "val_images": len(data.val),
            "batch": cfg.linear_batch, "epoch_seconds": epochs,
            "speedup": round(epochs[0] / median_later, 2) if median_later > 0 else None,
            "best_epoch": result.best_epoch}


# --- all of it -------------------------------------------------------------------------------------------------

def _target(name: str, value, key: str | None = None, applies: bool = True) -> dict:
    op, limit = TARGETS[key or name]
    holds = None
    if applies and value is not None and value == value:
        holds = value <= limit if op == "<=" else value >= limit
    return {"name": name, "value": value, "op": op, "limit": limit, "holds": holds,
            **({} if applies else {"note": "applies on a GPU only"})}


def machine_record(ctx: Context) -> dict:
    import timm

    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    try:
        from timm.layers.config import use_fused_attn
        fused = use_fused_attn()
    except ImportError:  # pragma: no cover - older timm
        fused = None
    return {
        "platform": platform.platform(), "processor": cpu_model or platform.processor(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "timm": timm.__version__, "device": str(ctx.device),
        "device_name": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else cpu_model,
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "dtype": dtype_name(ctx.device), "sdpa_attention": fused,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def make_context(cfg: PerfConfig) -> Context:
    """Device, threads, clock and the backbone pair of a run."""
    from medvtab.backbones import check_alignment
    from medvtab.perf.timing import pick_clock

    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedvtabError("option '--device': cuda requested but no CUDA device is available")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    general, medical = perf_backbone(cfg.general, device), perf_backbone(cfg.medical, device)
    check_alignment(general.info, medical.info).require()
    return Context(cfg, device, general, medical, max(general.input_size, medical.input_size),
                   Compiler(cfg.compile), clock=pick_clock(cfg.clock, device))


def run_perf(cfg: PerfConfig, on_progress: Callable[[str], None] = lambda m: None) -> dict:
    """Every measurement, in one process; the result is JSON-ready."""
    started = time.perf_counter()
    malloc_tuned = keep_freed_memory()  # as the CLI does for every command (see medvtab.engine.acceleration)
    ctx = make_context(cfg)
    device, general, medical = ctx.device, ctx.general, ctx.medical
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

    big = [r for r in backbones["rows"] if r["batch"] >= 32] or backbones["rows"][-1:]
    table = skip["tables"][-1]
    row = {(r["skip_mode"], r["keep_ratio"]): r for r in table["rows"]}
    ratios = {
        "both_over_one": big[-1]["both_over_one"]["median"],
        "dynamer_over_both": row[("adapter", 1.0)]["over_both_backbones"]["median"],
        **{_ratio_key(mode, r): row[(mode, r)]["speedup_vs_keep_1"]["median"]
           for mode in SKIP_MODES for r in KEEP_RATIOS if r < 1},
        "linear_epoch_speedup": linear["speedup"],
        "loading_over_training": loading["loading_over_training"],
    }
    if vitb_timed:
        ratios.update({f"vitb_{key}": value["median"] for key, value in vitb_timed.items()
                       if key == "dynamer_over_both" or "_skip_speedup_" in key})
    train_row = next((r for r in train["rows"] if r["method"] == "dynamer" and "error" not in r), None)
    ratios["flops_both_over_one"] = round(flops["both_backbones"] / flops["one_backbone"], 4)
    ratios["flops_dynamer_over_both"] = round(flops["dynamer_adapter_1.0"] / flops["both_backbones"], 4)
    ratios.update({f"flops_{key}": value for key, value in _flop_skip_speedups(flops, BLOCK_SKIP_MODES).items()})
    on_gpu = device.type == "cuda"
    targets = [_target(f"both_over_one (batch {r['batch']})", r["both_over_one"]["median"], "both_over_one")
               for r in big]
    targets += [
        _target("dynamer_over_both" + (" (GPU)" if on_gpu else " (CPU, eager)"), ratios["dynamer_over_both"],
                "dynamer_over_both_gpu" if on_gpu else "dynamer_over_both_cpu"),
        _target("block_skip_speedup_0.5", ratios["block_skip_speedup_0.5"]),
        _target("block_skip_speedup_0.3", ratios["block_skip_speedup_0.3"]),
        _target("linear_epoch_speedup", ratios["linear_epoch_speedup"]),
        _target("loading_over_training", ratios["loading_over_training"]),
    ]
    gpu_batch = table["batch"]
    targets += [
        _target(f"gpu_inference_images_per_s (DynaMer, batch {gpu_batch})", row[("adapter", 1.0)]["images_per_s"],
                "gpu_inference_images_per_s", applies=on_gpu),
        _target(f"gpu_training_images_per_s (DynaMer, batch {train['batch']})",
                train_row["images_per_s"] if train_row else None, "gpu_training_images_per_s", applies=on_gpu),
    ]
    meta = {
        "profile": cfg.profile, "general": cfg.general, "medical": cfg.medical,
        "backbones": {name: {k: v for k, v in asdict(b.info).items() if k in (
            "spec", "architecture", "input_size", "grid", "num_prefix_tokens", "width", "depth", "params",
            "random_init")} for name, b in (("general", general), ("medical", medical))},
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
        "section_seconds": durations,
    }
    result = {
        "machine": {**machine_record(ctx), "malloc_keeps_freed_memory": malloc_tuned}, "config": meta,
        "ratios": ratios, "targets": targets,
        "backbones": backbones, "skip": skip, "train_step": train, "moe": moe, "loading": loading,
        "flops": {"what": "FLOPs per image from torch.utils.flop_counter (matrix products, convolutions, "
                          "attention; element-wise work not counted)", "per_image": flops, "achieved": rates,
                  "vitb_pair": vitb},
        "linear_probe": linear, "vitb_pair": vitb_timed,
    }
    result["config"]["wall_seconds"] = round(time.perf_counter() - started, 1)
    return result


__all__ = ["KEEP_RATIOS", "SKIP_MODES", "TARGETS", "PerfConfig", "run_perf"]
