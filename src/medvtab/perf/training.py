"""Training speed: section ``train_step`` (one step of every registry method, relative to DynaMer's, with its peak
memory), ``loading`` (the engine's streaming loader producing training batches, against DynaMer training steps) and
``linear_probe`` (``fit`` epochs of the ``linear`` method: the first computes the backbone features, later ones
train the head on the cache)."""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from medvtab.data.loading import load_task
from medvtab.data.splits import subsample_train
from medvtab.engine.evaluate import task_loss
from medvtab.engine.data import EpochBatches, loader, shift_pad
from medvtab.engine.loop import TrainConfig, fit, seed_everything
from medvtab.engine.acceleration import set_grad_checkpointing
from medvtab.engine.precision import autocast
from medvtab.errors import MedvtabError
from medvtab.methods import get_method, method_names
from medvtab.perf.context import NUM_CLASSES, Context
from medvtab.perf.flops import count_flops
from medvtab.perf.memory import peak_memory


def train_step(model, images, labels, device: torch.device) -> Callable[[], None]:
    """One step of the engine's: forward, loss (+ the auxiliary loss), backward, AdamW; for a feature-caching
    method the head on features computed once here."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    if model.caches_features:
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


def measure_train_steps(ctx: Context) -> dict:
    names = list(ctx.cfg.methods or method_names())
    if "dynamer" not in names:
        names.append("dynamer")
    batch = ctx.cfg.train_batch
    x, y = ctx.images(batch), ctx.labels(batch)
    steps, errors, flops, models = {}, {}, {}, {}
    for name in names:
        try:
            get_method(name)
            model = ctx.build_method(name)
            set_grad_checkpointing(model, ctx.cfg.checkpointing)
            if ctx.compiler.enabled and not model.caches_features:
                model.forward = ctx.compiled(f"train {name}", model.forward)
            flops[name] = count_flops(train_step(model, ctx.images(ctx.cfg.flops_batch),
                                                 ctx.labels(ctx.cfg.flops_batch), ctx.device))
            step = train_step(model, x, y, ctx.device)
            step()  # at full batch size: a method that cannot run (out of memory) drops out here, with its reason
            models[name], steps[name] = model, step
        except (MedvtabError, RuntimeError, ValueError) as err:  # incl. torch.OutOfMemoryError
            errors[name] = f"{type(err).__name__}: {str(err)[:300]}"
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
    t = ctx.time(steps, ctx.cfg.train_rounds, settle=False)
    memory = {name: peak_memory(step, ctx.device) for name, step in steps.items()}
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


def measure_loading(ctx: Context, dynamer_train_ips: float) -> dict:
    """The engine's streaming path (:mod:`medvtab.engine.data`) over a memory-mapped .npy, as a prepared task is
    read: random order, a shift per image, a DataLoader with each of ``loading_workers`` worker counts; on a GPU
    pinned batches copied without blocking. Wall clock: the workers' time is the loader's too."""
    n, batch = ctx.cfg.loading_images, ctx.cfg.train_batch
    source_size = 28 if ctx.image_size <= 32 else ctx.image_size
    shape = (n, source_size, source_size, 1 if source_size == 28 else 3)
    gen = torch.Generator().manual_seed(0)
    steps = max(1, n // batch)
    with tempfile.TemporaryDirectory() as folder:
        images = np.lib.format.open_memmap(Path(folder) / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
        images[:] = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)

        def epoch(workers: int):
            batches = EpochBatches(torch.randperm(n, generator=gen), batch, steps, gen, shift_pad(source_size))
            for x, idx in loader(images, batches, workers, ctx.device):
                x.to(ctx.device, non_blocking=True)
                labels[idx].to(ctx.device, non_blocking=True)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)

        cases = {f"{w} workers": (lambda w=w: epoch(w)) for w in ctx.cfg.loading_workers}
        t = ctx.time(cases, max(2, ctx.cfg.train_rounds), settle=False, warmup=1)
    rows = []
    for workers, name in zip(ctx.cfg.loading_workers, cases):
        ips = steps * batch / statistics.median(t.wall[name])
        ratio = ips / dynamer_train_ips if dynamer_train_ips else float("nan")
        rows.append({"num_workers": workers, "loading_images_per_s": round(ips, 1),
                     "loading_over_training": round(ratio, 3),
                     "loading_fraction_of_step": round(1 / (1 + ratio), 4) if ratio == ratio else None})
    head = rows[0]
    return {"what": "training batches from the engine's streaming loader (a memory-mapped uint8 .npy as a prepared "
                    "task is read, random order, a reflect-padded shift per image, DataLoader worker processes; on a "
                    "GPU pinned batches copied without blocking), wall clock, against DynaMer training steps at the "
                    "same batch size (section train_step); the headline is the first worker count",
            "batch": batch, "image_shape": list(shape[1:]), "rows": rows,
            "num_workers": head["num_workers"], "loading_images_per_s": head["loading_images_per_s"],
            "training_images_per_s": dynamer_train_ips, "loading_over_training": head["loading_over_training"],
            "loading_fraction_of_step": head["loading_fraction_of_step"],
            "bottleneck": "loading" if head["loading_over_training"] < 1 else "training"}


def measure_linear(ctx: Context) -> dict:
    cfg = ctx.cfg
    data = subsample_train(load_task(cfg.linear_task, seed=0, image_size=ctx.image_size), cfg.linear_train_size, 0)
    seed_everything(0)
    model = ctx.build_method("linear")
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
