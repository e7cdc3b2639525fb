"""Evaluation: a model's class probabilities, loss and speed on a set of images (or on cached features).

Images are a split's ``(N, H, W, C)`` uint8 array (a prepared task's memory map included), streamed a batch at a
time (:mod:`medvtab.engine.data`). The training loss lives here too, so that training and evaluation measure the
same thing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medvtab.engine.data import feature_store, in_order
from medvtab.engine.precision import autocast
from medvtab.methods import AdaptedModel


def task_loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy on class indices (N,); on multi-label targets (N, L), binary cross-entropy per label with
    unknown (-1) entries masked out (mean over the known entries)."""
    if y.ndim == 1:
        return F.cross_entropy(logits, y, reduction=reduction)
    known = (y >= 0).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, y.clamp(min=0).to(logits.dtype), weight=known, reduction="sum")
    return loss if reduction == "sum" else loss / known.sum().clamp(min=1)


def to_probs(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    return logits.sigmoid() if multi_label else logits.softmax(-1)


def _loss_count(y: np.ndarray) -> int:
    """What a summed loss is divided by: images, or known multi-label entries."""
    return int((y >= 0).sum()) if y.ndim == 2 else len(y)


@dataclass
class EvalResult:
    probs: np.ndarray
    loss: float
    ms_per_batch: float
    images_per_second: float


@torch.inference_mode()
def evaluate(model: AdaptedModel, images: np.ndarray, labels: np.ndarray, batch_size: int,
             device: torch.device, record_stats: bool = False, num_workers: int = 0) -> EvalResult:
    """``images``: (N, H, W, C) uint8; ``labels``: class indices (N,) or multi-label targets (N, L) (then
    probabilities are per-label sigmoids). The loss is computed once over all logits, so the result does not
    depend on ``batch_size`` (nor on ``num_workers``, the loader's worker processes)."""
    model.eval()
    model.set_record_stats(record_stats)
    if record_stats:
        model.reset_routing_stats()
    logits, times = [], []
    for x, _ in in_order(images, batch_size, num_workers, device):
        x = x.to(device, non_blocking=True)
        t0 = time.perf_counter()
        with autocast(device):
            logits.append(model(x).float())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        logits[-1] = logits[-1].cpu()
    model.set_record_stats(False)
    logits, total = torch.cat(logits), sum(times)
    loss = task_loss(logits, torch.as_tensor(labels), reduction="sum").item()
    return EvalResult(to_probs(logits, labels.ndim == 2).numpy(), loss / max(1, _loss_count(labels)),
                      1000 * total / len(times), len(labels) / total if total else float("nan"))


@torch.inference_mode()
def backbone_features(model: AdaptedModel, images: np.ndarray, batch_size: int, device: torch.device,
                      num_workers: int = 0, spill_dir: Path | None = None) -> torch.Tensor:
    """The fixed features of a feature-caching model (no augmentation: they are computed once), on ``device``,
    or in a memory-mapped file in ``spill_dir`` where large (:func:`~medvtab.engine.data.feature_store`)."""
    model.eval()
    features, start = None, 0
    for x, _ in in_order(images, batch_size, num_workers, device):
        with autocast(device):
            chunk = model.features(x.to(device, non_blocking=True)).float()
        if features is None:
            features = feature_store(len(images), tuple(chunk.shape[1:]), device, spill_dir)
        features[start:start + len(chunk)] = chunk
        start += len(chunk)
    return features


@torch.inference_mode()
def evaluate_features(model: AdaptedModel, features: torch.Tensor, labels: np.ndarray, batch_size: int,
                      device: torch.device) -> EvalResult:
    model.eval()
    logits = torch.cat([model.logits_from_features(features[s:s + batch_size].to(device)).float()
                        for s in range(0, len(features), batch_size)])
    y = torch.as_tensor(labels, device=logits.device)
    loss = task_loss(logits, y).item()
    return EvalResult(to_probs(logits, labels.ndim == 2).cpu().numpy(), loss, float("nan"), float("nan"))
