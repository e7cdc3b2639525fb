"""What every measurement of ``medvtab perf`` reads: the run's settings (:class:`PerfConfig`), and the device,
clock, backbone pair and compiler of the run (:class:`Context`, made by :func:`make_context`), plus the record of
the machine it ran on."""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Callable

import timm
import torch
from timm.layers.config import use_fused_attn

from medvtab.backbones import check_alignment, load_backbone
from medvtab.engine.acceleration import compile_with_fallback
from medvtab.engine.precision import autocast
from medvtab.errors import MedvtabError
from medvtab.methods import build_model, make_config, resolve_backbone_specs
from medvtab.perf.timing import interleaved, pick_clock

NUM_CLASSES = 2


@dataclass
class PerfConfig:
    general: str = "tiny-general"
    medical: str = "tiny-medical"
    device: str = "cpu"
    threads: int | None = None          # torch CPU threads (None: leave torch's setting)
    profile: str = "default"
    batch_sizes: tuple[int, ...] = (1, 32, 256)        # backbones
    skip_batch_sizes: tuple[int, ...] = (32, 256)      # skip
    train_batch: int = 32                               # train_step and loading
    rounds: int = 9
    train_rounds: int = 5
    warmup: int = 1
    small_batch_rounds: int = 21                        # batch sizes below 8: cheap, noisier
    methods: tuple[str, ...] | None = None              # None: every registry method
    moe_batches: tuple[int, ...] = (32, 256)            # token rows = batch x merged tokens per stream
    moe_experts: tuple[int, ...] = (4, 8, 16)
    moe_rounds: int = 7
    loading_images: int = 4096
    loading_workers: tuple[int, ...] = (0, 2)          # DataLoader worker counts timed; the first is the headline
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
    vitb_rounds: int = 11                               # batch 1 at about a second a case: few rounds are noisy

    @classmethod
    def for_profile(cls, device: str, quick: bool, **overrides) -> "PerfConfig":
        """``quick``: a few seconds on a laptop CPU (tests, smoke runs); else the CPU defaults above, or on a GPU
        batch sizes 1, 32, 256 everywhere and more rounds."""
        base: dict = {"device": device}
        if quick:
            base.update(profile="quick", batch_sizes=(2,), skip_batch_sizes=(4,), train_batch=4, rounds=2,
                        train_rounds=1, warmup=1, small_batch_rounds=2, methods=("linear", "lora", "dynamer"),
                        moe_batches=(4,), moe_experts=(4, 8), moe_rounds=2, loading_images=64, loading_workers=(0, 1),
                        linear_train_size=64, linear_epochs=2, linear_batch=32, adapter_calls=2, vitb_flops=False,
                        vitb_batch=None)
        elif torch.device(device).type == "cuda":
            base.update(profile="gpu", batch_sizes=(1, 32, 256), skip_batch_sizes=(32, 256), train_batch=256,
                        rounds=20, train_rounds=10, warmup=3, small_batch_rounds=50, moe_batches=(32, 256),
                        loading_images=16384, vitb_batch=None)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


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


def under_inference(fn: Callable, device: torch.device) -> Callable[[], object]:
    """``fn`` in inference mode at the engine's precision (bf16 autocast on a GPU, float32 on a CPU)."""
    def run():
        with torch.inference_mode(), autocast(device):
            return fn()
    return run


@dataclass
class Context:
    cfg: PerfConfig
    device: torch.device
    general: torch.nn.Module
    medical: torch.nn.Module
    image_size: int
    compiler: Compiler
    clock: str = "wall"

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

    def compiled(self, name: str, module: Callable) -> Callable:
        """``module`` through the run's :class:`Compiler`, its first call one on two images."""
        return self.compiler(name, module, lambda f: under_inference(lambda: f(self.images(2)), self.device)())

    def build_method(self, name: str, options: dict | None = None):
        """Registry method ``name`` on this run's backbone pair, a 2-class head, seeded, on the device."""
        config = make_config(name, options or {})
        specs = resolve_backbone_specs(name, config, self.cfg.general, self.cfg.medical)
        pool = {self.cfg.general: self.general, self.cfg.medical: self.medical}
        backbones = [pool[s] for s in specs]
        torch.manual_seed(0)
        model = build_model(name, config, backbones[0], backbones[1] if len(backbones) > 1 else None, NUM_CLASSES)
        return model.to(self.device)

    def dynamer(self, keep_ratio: float = 1.0, skip_mode: str = "adapter"):
        return self.build_method("dynamer", {"keep_ratio": keep_ratio, "skip_mode": skip_mode}).eval()


def make_context(cfg: PerfConfig) -> Context:
    """Device, threads, clock and the backbone pair of a run."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedvtabError("option '--device': cuda requested but no CUDA device is available")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    general, medical = load_backbone(cfg.general).to(device), load_backbone(cfg.medical).to(device)
    check_alignment(general.info, medical.info).require()
    return Context(cfg, device, general, medical, max(general.input_size, medical.input_size),
                   Compiler(cfg.compile), clock=pick_clock(cfg.clock, device))


def dtype_name(device: torch.device) -> str:
    return "bfloat16 autocast" if device.type == "cuda" else "float32"


def machine_record(ctx: Context) -> dict:
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    return {
        "platform": platform.platform(), "processor": cpu_model or platform.processor(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "timm": timm.__version__, "device": str(ctx.device),
        "device_name": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else cpu_model,
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "dtype": dtype_name(ctx.device), "sdpa_attention": use_fused_attn(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
