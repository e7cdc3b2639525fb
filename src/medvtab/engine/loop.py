"""The training loop: AdamW, warm-up + cosine schedule, early stopping on the validation score.

:func:`fit` reads top to bottom: set up, then per epoch a training pass (:class:`TrainingPass`, started again
at a smaller batch size after CUDA out of memory with ``--auto-batch``), a validation pass, early-stopping
bookkeeping and a checkpoint of the whole :class:`~medvtab.engine.state.TrainState`.

Images stream from the split's array (a prepared task's memory map included) a batch at a time, through a
DataLoader (:mod:`medvtab.engine.data`); each backbone resizes and normalises inside the model, on the device.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from medvtab.data import Split
from medvtab.engine.acceleration import (FEATURE_CACHING_NOT_COMPILED, CompiledForward, compile_for_training,
                                         set_grad_checkpointing)
from medvtab.engine.batches import BatchSizes
from medvtab.engine.data import EpochBatches, in_order, loader, shift_pad
from medvtab.engine.evaluate import EvalResult, backbone_features, evaluate, evaluate_features, task_loss
from medvtab.engine.metrics import selection_score
from medvtab.engine.precision import autocast
from medvtab.engine.state import TrainState
from medvtab.errors import MedvtabError
from medvtab.methods import AdaptedModel


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    lr: float | None = Field(None, gt=0, description="None: the method's default (1e-4 for most)")
    head_lr_scale: float = Field(10.0, gt=0, description="the freshly initialised classifier learns this much faster")
    weight_decay: float = Field(0.01, ge=0)
    patience: int = Field(5, ge=1, description="epochs without validation gain before stopping")
    seed: int = 0
    device: str = "cpu"
    augment: bool = True
    devices: int = Field(1, ge=1, description="processes per machine (DDP through Lightning Fabric)")
    skip_nonfinite: int = Field(0, ge=0, description="bad (NaN / infinite loss) batches to skip before stopping")
    num_nodes: int = Field(1, ge=1, description="machines")
    auto_batch: bool = Field(False, description="on CUDA out of memory, halve the batch size and go on (recorded)")
    compile: bool = Field(False, description="torch.compile the model's forward for training and evaluation; eager "
                                             "where compiling fails (the reason is recorded)")
    grad_checkpointing: bool = Field(False, description="recompute the backbone blocks in the backward pass instead "
                                                        "of keeping their activations (less memory, same results)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes reading and augmenting images (0: "
                                                  "in the training process); results do not depend on it")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_count(fabric) -> int:
    return 1 if fabric is None else fabric.world_size


class NonFiniteLoss(MedvtabError):
    """Training stopped on a NaN or infinite loss (the last good checkpoint is kept)."""


def _finite_everywhere(loss: torch.Tensor, fabric) -> bool:
    finite = torch.isfinite(loss.detach()).all().float()
    if fabric is not None:  # every process must take the same branch
        finite = fabric.all_reduce(finite.to(fabric.device), reduce_op="mean")
    return bool(finite.item() == 1.0)


@dataclass
class TrainingPass:
    """What an epoch's pass over the training set needs besides the :class:`TrainState` it advances.
    ``wrapped``: the model as Fabric set it up (DDP), else the model; ``images``: the (N, H, W, C) uint8 training
    images (read a batch at a time); ``features``: a feature-caching model's backbone features of the training
    images, once computed."""
    model: AdaptedModel
    wrapped: torch.nn.Module
    images: np.ndarray
    labels: torch.Tensor
    cfg: TrainConfig
    fabric: object = None
    on_step: Callable[[int, int, float], None] | None = None
    checkpoint: Path | None = None
    features: torch.Tensor | None = None

    def run(self, state: TrainState, epoch: int) -> tuple[float, int]:
        """One pass; returns the summed loss and the images seen."""
        rank, world = (self.fabric.global_rank, self.fabric.world_size) if self.fabric is not None else (0, 1)
        device, size = state.device, state.batches.train
        self.model.train()
        order = torch.randperm(len(self.labels), generator=state.generator)
        # shifts are drawn for the whole global batch (the single-process random stream), then each process keeps
        # its share; cached features are never shifted
        pad = shift_pad(self.images.shape[1]) if self.cfg.augment and self.features is None else None
        batches = EpochBatches(order, size, state.steps_per_epoch(), state.generator, pad, rank, world)
        stream = (((None, torch.tensor(idx)) for idx in batches) if self.features is not None
                  else loader(self.images, batches, self.cfg.num_workers, device))
        running, seen = 0.0, 0
        for i, (x, idx) in enumerate(stream):
            y = self.labels[idx].to(device, non_blocking=True)
            with autocast(device):
                if self.features is not None:
                    logits = self.wrapped.logits_from_features(
                        self.features[idx.to(self.features.device)].to(device, non_blocking=True))
                else:
                    logits = self.wrapped(x.to(device, non_blocking=True))
                loss = task_loss(logits.float(), y)
                aux = self.model.auxiliary_loss()
                total_loss = loss + aux if aux is not None else loss
            state.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            if not _finite_everywhere(total_loss, self.fabric):
                self._skip(state, total_loss, epoch, i + 1)
                state.scheduler.step()  # the schedule stays on its course; the weights are not updated
                continue
            if self.fabric is not None:
                self.fabric.backward(total_loss)
            else:
                total_loss.backward()
            state.optimizer.step()
            state.scheduler.step()
            running += loss.item() * len(idx)
            seen += len(idx)
            if self.on_step:
                self.on_step(state.step, self.cfg.epochs * state.steps_per_epoch(), running / seen)
        return running, seen

    def _skip(self, state: TrainState, loss: torch.Tensor, epoch: int, batch: int) -> None:
        """Count a batch with a non-finite loss as skipped, or stop the run when no more may be skipped."""
        if state.skipped_batches >= self.cfg.skip_nonfinite:
            kept = (f"the last good checkpoint (epoch {epoch - 1}) is kept in {self.checkpoint}"
                    if self.checkpoint is not None and epoch > 1 else "no epoch had finished")
            raise NonFiniteLoss(f"non-finite training loss ({loss.item()}) at epoch {epoch}, batch {batch}; {kept}; "
                                f"lower --lr, or pass --skip-nonfinite N to skip up to N bad batches")
        state.skipped_batches += 1


def train_epoch(training: TrainingPass, state: TrainState, epoch: int) -> tuple[float, int]:
    """``training.run``; after CUDA out of memory with ``--auto-batch`` the epoch starts again from its starting
    state at half the batch size, on the schedule of that batch size, so it goes on exactly as a run started at
    that batch size would from that epoch's weights (else :class:`~medvtab.engine.batches.OutOfMemory`)."""
    while True:
        start = state.capture() if state.batches.auto else None  # the state this attempt starts from
        try:
            return training.run(state, epoch)
        except torch.OutOfMemoryError:
            pass  # leaving the handler frees the failed batch's tensors
        state.optimizer.zero_grad(set_to_none=True)
        if start is not None:
            state.restore(start)
        state.batches.shrink("train", epoch, epoch - 1, len(training.labels))  # raises unless it may halve
        state.step = (epoch - 1) * state.steps_per_epoch()  # where a run at this batch size would stand
        state.reschedule()


@dataclass
class FitResult:
    batches: BatchSizes
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_probs: np.ndarray | None = None  # the validation pass of the best epoch (the weights kept)
    train_seconds: float = 0.0
    skipped_batches: int = 0
    compile: dict = field(default_factory=lambda: {"requested": False, "in_effect": False, "fallback": None})
    compiled: CompiledForward | None = None  # the model's compiled forward, where compiling was tried
    stopped_at_epoch: int | None = None  # the epoch after which ``on_epoch`` stopped the run (a pruned trial)

    def compile_record(self) -> dict:
        """``compile``: requested, in effect, the fallback reason; as of now (a pass after training, such as the
        test pass, may still fall back)."""
        return self.compiled.record() if self.compiled is not None else self.compile


def _compile(model: AdaptedModel, cfg: TrainConfig, probe_images: torch.Tensor, device: torch.device, fabric,
             on_note: Callable[[str], None]) -> tuple[CompiledForward | None, dict]:
    """``cfg.compile``: the model's forward compiled for training (None for a feature-caching model: its backbone
    runs once), and the compile record while nothing is compiled."""
    if cfg.compile and model.caches_features:
        on_note(f"note: --compile: {FEATURE_CACHING_NOT_COMPILED}")
        return None, {"requested": True, "in_effect": False, "fallback": FEATURE_CACHING_NOT_COMPILED}
    compiled = compile_for_training(model, probe_images, device, fabric, on_note) if cfg.compile else None
    return compiled, {"requested": False, "in_effect": False, "fallback": None}


def adamw(model: AdaptedModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW on the trainable parameters at ``cfg.lr`` (None: the model's method's default), the classifier head
    ``cfg.head_lr_scale`` times faster."""
    lr = cfg.lr if cfg.lr is not None else model.default_lr
    if lr is None:
        raise MedvtabError("TrainConfig.lr: None needs a model built by medvtab.methods.build_model (which knows "
                           "its method's default learning rate)")
    head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("head.")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    return torch.optim.AdamW([{"params": rest}, {"params": head, "lr": lr * cfg.head_lr_scale}], lr=lr,
                             weight_decay=cfg.weight_decay)


def fit(model: AdaptedModel, train: Split, val: Split, cfg: TrainConfig,
        on_step: Callable[[int, int, float], None] | None = None, fabric=None,
        on_epoch: Callable[[dict], bool | None] | None = None, checkpoint: Path | None = None,
        resume: dict | None = None, fingerprint: dict | None = None,
        on_note: Callable[[str], None] = print) -> FitResult:
    """Train the model's trainable parameters; restore the weights of the best validation epoch (accuracy; for a
    multi-label task, mean AUROC over labels).

    ``fabric`` (:mod:`medvtab.engine.distributed`): each global batch is split across its processes and DDP
    averages the gradients. ``checkpoint``: after every epoch the whole :class:`TrainState` is written there;
    ``resume``: such a state (:func:`~medvtab.engine.state.load_checkpoint`), whose ``fingerprint`` must equal
    this run's, to continue from. ``on_epoch`` gets each epoch's history row; a true return stops the run after
    that epoch (a tuner pruning a trial; recorded as ``FitResult.stopped_at_epoch``). A non-finite loss raises :class:`NonFiniteLoss` unless ``cfg.skip_nonfinite``
    bad batches are allowed (each is skipped: no update, counted in ``FitResult.skipped_batches``). CUDA out of
    memory: see :func:`train_epoch` (training) and :meth:`BatchSizes.evaluate` (a pass is repeated)."""
    device = fabric.device if fabric is not None else torch.device(cfg.device)
    model.to(device)
    set_grad_checkpointing(model, cfg.grad_checkpointing)
    train_y = torch.from_numpy(train.y)
    probe, _ = next(iter(in_order(train.images[:3], 3, 0, torch.device("cpu"))))  # what a training batch looks like
    compiling = time.perf_counter()
    compiled, compile_record = _compile(model, cfg, probe, device, fabric, on_note)
    compiling = time.perf_counter() - compiling  # counted in the training time
    optimizer, wrapped = adamw(model, cfg), model
    if fabric is not None:
        wrapped, optimizer = fabric.setup(model, optimizer)
        if model.caches_features:
            wrapped.mark_forward_method("logits_from_features")
    batches = BatchSizes(cfg.batch_size, cfg.eval_batch_size, cfg.auto_batch, device=device, checkpoint=checkpoint,
                         on_note=on_note)
    state = TrainState(model, optimizer, torch.Generator().manual_seed(cfg.seed), batches, cfg.epochs, len(train),
                       rank_count(fabric), fingerprint)
    if resume is not None:
        state.restore(resume)
    if device.type == "cuda":
        train_y = train_y.pin_memory()
    training = TrainingPass(model, wrapped, train.images, train_y, cfg, fabric, on_step, checkpoint)
    spill_dir = checkpoint.parent if checkpoint is not None else None  # large cached features: a file there
    val_features = None
    start = time.perf_counter() - state.elapsed - compiling
    stopped_at = None
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if state.stopped:
            break
        if model.caches_features and val_features is None:  # the first epoch pays for the features, once
            training.features, val_features = (
                batches.evaluate(lambda b, x=x: backbone_features(model, x, b, device, cfg.num_workers, spill_dir),
                                 len(x), "eval", epoch, epoch - 1) for x in (train.images, val.images))
        running, seen = train_epoch(training, state, epoch)
        scored = batches.evaluate(
            lambda b: (evaluate_features(model, val_features, val.y, b, device) if val_features is not None
                       else evaluate(model, val.images, val.y, b, device, num_workers=cfg.num_workers)),
            len(val), "eval", epoch, epoch - 1)
        score = _validation_score(val, scored, epoch, checkpoint)
        state.history.append({"epoch": epoch, "train_loss": round(running / seen, 6) if seen else float("nan"),
                              "val_loss": round(scored.loss, 6),
                              "val_auroc" if val.targets is not None else "val_accuracy": round(score, 6),
                              "lr": optimizer.param_groups[0]["lr"],
                              "seconds": round(time.perf_counter() - start, 3)})
        stop = bool(on_epoch(state.history[-1])) if on_epoch else False
        state.end_epoch(epoch, score, cfg.patience, scored.probs)
        if stop:
            state.stopped, stopped_at = True, epoch  # a resumed checkpoint stops here too
        if checkpoint is not None and (fabric is None or fabric.global_rank == 0):
            state.elapsed = time.perf_counter() - start
            state.save(checkpoint)
    if state.best_state is not None:
        model.load_trainable_state_dict(state.best_state, "best validation epoch")
    best_val_probs = state.best_val_probs.numpy() if state.best_val_probs is not None else None
    return FitResult(batches, state.history, state.best_epoch, best_val_probs, time.perf_counter() - start,
                     state.skipped_batches, compile_record, compiled, stopped_at)


def _validation_score(val: Split, scored: EvalResult, epoch: int, checkpoint: Path | None) -> float:
    """The selection score (:func:`~medvtab.engine.metrics.selection_score`) of a validation pass; non-finite
    outputs (diverged weights) stop the run."""
    if not np.isfinite(scored.probs).all():
        kept = (f"the last good checkpoint (epoch {epoch - 1}) is kept in {checkpoint}; "
                if checkpoint is not None and epoch > 1 else "")
        raise NonFiniteLoss(f"non-finite validation outputs at epoch {epoch}: the weights diverged; {kept}lower --lr")
    return selection_score(val.y, scored.probs)
