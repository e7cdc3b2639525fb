"""The train/eval loop: AdamW, warm-up + cosine schedule, early stopping on validation accuracy.

Data sits in memory as uint8 tensors; each backbone resizes and normalises inside the model, on the device.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from medvtab.atomic import atomic_write
from medvtab.data import Split
from medvtab.engine.metrics import selection_score
from medvtab.engine.speed import CompiledForward, set_grad_checkpointing
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def as_tensor(split: Split) -> torch.Tensor:
    """(N, H, W, C) uint8 array -> (N, C, H, W) uint8 tensor."""
    return torch.from_numpy(split.images).permute(0, 3, 1, 2).contiguous()


def random_shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Light augmentation: translate each image by up to 1/8 of its size (reflect padding). No flips:
    laterality matters in medical images."""
    b, _, h, w = images.shape
    pad = max(1, h // 8)
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    return out.round_().to(torch.uint8)


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


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)


@dataclass
class EvalResult:
    probs: np.ndarray
    loss: float
    ms_per_batch: float
    images_per_second: float


@torch.inference_mode()
def evaluate(model: AdaptedModel, images: torch.Tensor, labels: np.ndarray, batch_size: int,
             device: torch.device, record_stats: bool = False) -> EvalResult:
    """``labels``: class indices (N,) or multi-label targets (N, L) (then probabilities are per-label sigmoids).
    The loss is computed once over all logits, so the result does not depend on ``batch_size``."""
    model.eval()
    model.set_record_stats(record_stats)
    if record_stats:
        model.reset_routing_stats()
    logits, times = [], []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device, non_blocking=True)
        t0 = time.perf_counter()
        with _autocast(device):
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
def backbone_features(model: AdaptedModel, images: torch.Tensor, batch_size: int,
                      device: torch.device) -> torch.Tensor:
    """The fixed features of a feature-caching model (no augmentation: they are computed once)."""
    model.eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        with _autocast(device):
            chunks.append(model.features(images[start:start + batch_size].to(device)).float())
    return torch.cat(chunks)


@torch.inference_mode()
def evaluate_features(model: AdaptedModel, features: torch.Tensor, labels: np.ndarray,
                      batch_size: int) -> EvalResult:
    model.eval()
    logits = torch.cat([model.logits_from_features(features[s:s + batch_size]).float()
                        for s in range(0, len(features), batch_size)])
    y = torch.as_tensor(labels, device=logits.device)
    loss = task_loss(logits, y).item()
    return EvalResult(to_probs(logits, labels.ndim == 2).cpu().numpy(), loss, float("nan"), float("nan"))


def rank_count(fabric) -> int:
    return 1 if fabric is None else fabric.world_size


class NonFiniteLoss(MedvtabError):
    """Training stopped on a NaN or infinite loss (the last good checkpoint is kept)."""


class OutOfMemory(MedvtabError):
    """CUDA ran out of memory and the batch size may not (or cannot) be halved (the last checkpoint is kept)."""


@dataclass
class BatchSizes:
    """The training and evaluation batch sizes in use. On a CUDA out-of-memory error :meth:`shrink` halves the
    one that ran out when ``auto`` (each reduction recorded, a note printed), else stops the run naming the size
    to try. ``checkpoint``: where the last finished epoch is kept (for the message)."""
    train: int
    eval: int
    auto: bool = False
    reductions: list[dict] = field(default_factory=list)
    device: torch.device = torch.device("cpu")
    checkpoint: Path | None = None
    on_note: Callable[[str], None] = print

    def shrink(self, phase: str, epoch: int | None, finished: int, images: int) -> None:
        """After an out-of-memory error in ``phase`` ("train", "eval": validation in ``epoch``, or "test":
        epoch None) on a pass over ``images`` images, with ``finished`` epochs in the checkpoint."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        name, option = ("train", "--batch-size") if phase == "train" else ("eval", "--eval-batch-size")
        size = min(getattr(self, name), max(1, images))  # what ran out: a batch is at most the whole pass
        what = (f"out of GPU memory at batch size {size} " + (f"in epoch {epoch}" if epoch else "on the test set")
                + (" (training)" if phase == "train" else " (evaluation)"))
        if self.auto and size > 1:
            setattr(self, name, size // 2)
            self.reductions.append({"epoch": epoch, "phase": phase, "from": size, "to": size // 2})
            self.on_note(f"note: {what}; --auto-batch: {option} {size // 2} from here on"
                         + (f" (epoch {epoch} starts again)" if phase == "train" else ""))
            return
        kept = ""
        if self.checkpoint is not None:
            hint = "--auto-batch" if phase == "train" else f"--eval-batch-size {max(1, size // 2)}"
            kept = (f"; the last finished epoch ({finished}) is kept in {self.checkpoint} (resume with --resume "
                    f"{self.checkpoint.parent} {hint})" if finished else "; no epoch had finished")
        if size == 1:
            raise OutOfMemory(f"{what}: the model does not fit on this device even one image at a time{kept}")
        raise OutOfMemory(f"{what}; try {option} {size // 2}, or --auto-batch to halve it automatically{kept}")

    def evaluate(self, run_pass: Callable[[int], object], images: int, phase: str, epoch: int | None,
                 finished: int):
        """``run_pass(eval batch size)`` over ``images`` images, retried at half the size after an out-of-memory
        error (its results do not depend on the batch size)."""
        while True:
            try:
                return run_pass(self.eval)
            except torch.OutOfMemoryError:
                pass  # leaving the handler frees the failed pass's tensors
            self.shrink(phase, epoch, finished, images)


@dataclass
class FitResult:
    batches: BatchSizes
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    train_seconds: float = 0.0
    skipped_batches: int = 0
    compile: dict = field(default_factory=lambda: {"requested": False, "in_effect": False, "fallback": None})
    compiled: CompiledForward | None = None  # the model's compiled forward, where compiling was tried

    def compile_record(self) -> dict:
        """``compile``: requested, in effect, the fallback reason; as of now (a pass after training, such as the
        test pass, may still fall back)."""
        return self.compiled.record() if self.compiled is not None else self.compile


def _cpu_copy(state):
    """A copy of a (nested) state dict with every tensor cloned to the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _cpu_copy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cpu_copy(v) for v in state)
    return state


CHECKPOINT_FORMAT = 1


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically: a kill leaves the previous checkpoint or this one, never a torn file."""
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    """Tensors, numbers, strings and containers only (``weights_only``): a checkpoint cannot run code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MedvtabError(f"{path}: no checkpoint to resume from") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for corrupt or foreign files
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise MedvtabError(f"{path}: not a readable medvtab checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise MedvtabError(f"{path}: not a medvtab training checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def _finite_everywhere(loss: torch.Tensor, fabric) -> bool:
    finite = torch.isfinite(loss.detach()).all().float()
    if fabric is not None:  # every process must take the same branch
        finite = fabric.all_reduce(finite.to(fabric.device), reduce_op="mean")
    return bool(finite.item() == 1.0)


FEATURE_CACHING_NOT_COMPILED = ("not applied: a feature-caching method (its backbone features are computed once "
                                "and its head trains on them)")


def compile_for_training(model: AdaptedModel, probe_images: torch.Tensor, device: torch.device,
                         fabric=None, on_note: Callable[[str], None] = print) -> CompiledForward:
    """``model.forward`` compiled (:class:`CompiledForward`), tried by forward and backward passes in training
    mode on the first two, then three ``probe_images`` (a second batch size makes the compiler build the graph
    for any batch size, so the run's batches need no further compilation; each backward is compiled at its first
    call), with the random state restored and the gradients cleared afterwards, so the run goes on as it would
    have. Under ``fabric`` every process falls back where any could not compile. Call on the bare model, before
    ``fabric.setup``: DDP then wraps the module whose forward is compiled (PyTorch's advice for DDP), and
    evaluation, which runs the bare model, is compiled too. A fallback, here or later, is noted."""
    torch._dynamo.reset()  # a fresh cache per run: many runs in one process (grids) must not reach its limit
    compiled = CompiledForward(model, lambda reason: on_note(f"note: --compile: running eagerly from here on "
                                                             f"({reason})"))

    def probe() -> None:
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            model.train()
            for n in sorted({min(2, len(probe_images)), min(3, len(probe_images))}):
                with _autocast(device):
                    loss = model(probe_images[:n].to(device)).float().sum()
                    aux = model.auxiliary_loss()
                    if aux is not None:
                        loss = loss + aux
                loss.backward()

    try:
        compiled.check(probe, "first compiled training step")
    finally:
        for p in model.parameters():
            p.grad = None
    if fabric is not None:
        ok = fabric.all_reduce(torch.tensor(float(compiled.in_effect), device=fabric.device), reduce_op="mean")
        if float(ok) < 1.0:
            compiled.disable("another process of the run could not compile (every process runs eagerly)")
    return compiled


def fit(model: AdaptedModel, train: Split, val: Split, cfg: TrainConfig,
        on_step: Callable[[int, int, float], None] | None = None, fabric=None,
        on_epoch: Callable[[dict], None] | None = None, checkpoint: Path | None = None,
        resume: dict | None = None, fingerprint: dict | None = None,
        on_note: Callable[[str], None] = print) -> FitResult:
    """Train the model's trainable parameters; restore the weights of the best validation epoch (accuracy; for a
    multi-label task, mean AUROC over labels).

    ``fabric`` (:mod:`medvtab.engine.distributed`): each global batch is split across its processes and DDP
    averages the gradients. ``checkpoint``: after every epoch the whole training state (trainable weights,
    optimizer, schedule, random states, data order, early-stopping state, batch sizes, log) is written there;
    ``resume``: such a state (:func:`load_checkpoint`), whose ``fingerprint`` must equal this run's, to continue
    from. A non-finite loss raises :class:`NonFiniteLoss` unless ``cfg.skip_nonfinite`` bad batches are allowed
    (each is skipped: no update, counted in ``FitResult.skipped_batches``).

    CUDA out of memory raises :class:`OutOfMemory` naming the batch size to try; with ``cfg.auto_batch`` the
    batch size is halved instead (``FitResult.batches``): in training the epoch starts again from its starting
    state with the schedule of the smaller batch, so it goes on exactly as a run started at that batch size
    would from that epoch's weights; a validation or feature pass is simply repeated."""
    device = fabric.device if fabric is not None else torch.device(cfg.device)
    model.to(device)
    set_grad_checkpointing(model, cfg.grad_checkpointing)
    train_x, val_x = as_tensor(train), as_tensor(val)
    compiled, compiling = None, time.perf_counter()
    if cfg.compile and not model.caches_features:
        compiled = compile_for_training(model, train_x[:3], device, fabric, on_note)
    compiling = time.perf_counter() - compiling  # counted in the training time
    head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("head.")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    optimizer = torch.optim.AdamW([{"params": rest}, {"params": head, "lr": cfg.lr * cfg.head_lr_scale}],
                                  lr=cfg.lr, weight_decay=cfg.weight_decay)
    rank, world = (fabric.global_rank, fabric.world_size) if fabric is not None else (0, 1)
    wrapped = model
    if fabric is not None:
        wrapped, optimizer = fabric.setup(model, optimizer)
        if model.caches_features:
            wrapped.mark_forward_method("logits_from_features")
    batches = BatchSizes(cfg.batch_size, cfg.eval_batch_size, cfg.auto_batch, device=device, checkpoint=checkpoint,
                         on_note=on_note)

    def steps_per_epoch() -> int:
        steps = math.ceil(len(train) / batches.train)
        if 0 < len(train) % batches.train < rank_count(fabric):  # a last batch too small to give every process one
            steps -= 1
        return steps

    def make_scheduler(step: int) -> torch.optim.lr_scheduler.LambdaLR:
        """Warm-up then cosine over the run's steps at the current batch size, positioned at ``step``."""
        total = cfg.epochs * steps_per_epoch()
        warmup = max(1, min(steps_per_epoch(), total // 10))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule, last_epoch=step - 1)

    generator = torch.Generator().manual_seed(cfg.seed)
    train_y = torch.from_numpy(train.y)
    score_name = "val_auroc" if val.targets is not None else "val_accuracy"
    if device.type == "cuda":
        train_x, train_y = train_x.pin_memory(), train_y.pin_memory()

    result, best_acc, stale, step, first_epoch, stopped, elapsed = FitResult(batches), -1.0, 0, 0, 1, False, 0.0
    if cfg.compile and compiled is None:
        result.compile = {"requested": True, "in_effect": False, "fallback": FEATURE_CACHING_NOT_COMPILED}
        on_note(f"note: --compile: {FEATURE_CACHING_NOT_COMPILED}")
    result.compiled = compiled
    best_state = None
    if resume is not None:
        if resume.get("fingerprint") != fingerprint:
            differ = sorted(k for k in set(resume.get("fingerprint") or {}) | set(fingerprint or {})
                            if (resume.get("fingerprint") or {}).get(k) != (fingerprint or {}).get(k))
            raise MedvtabError(f"option '--resume': the checkpoint was written by a different run (differs in: "
                               f"{', '.join(differ) or 'everything'}); resume with the same options")
        batches.train = resume.get("batch_size", cfg.batch_size)  # as reduced by --auto-batch
        batches.eval = min(cfg.eval_batch_size, resume.get("eval_batch_size", cfg.eval_batch_size))
        batches.reductions = list(resume.get("batch_size_reductions", []))
    scheduler = make_scheduler(0)
    if resume is not None:
        model.load_trainable_state_dict({k: v.to(device) for k, v in resume["trainable"].items()}, "checkpoint")
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        best_state = resume["best_state"] or None
        best_acc, stale, step, stopped = resume["best_acc"], resume["stale"], resume["step"], resume["stopped"]
        result.best_epoch, result.history = resume["best_epoch"], list(resume["history"])
        result.skipped_batches, elapsed = resume["skipped_batches"], resume["elapsed"]
        first_epoch = resume["epoch"] + 1
    cached = None  # (train features, val features) for models that cache them
    start = time.perf_counter() - elapsed - compiling

    def train_epoch(epoch: int) -> tuple[float, int]:
        """One pass over the training set; returns the summed loss and the images seen."""
        nonlocal step
        model.train()
        order = torch.randperm(len(train), generator=generator)
        running, seen = 0.0, 0
        for i in range(steps_per_epoch()):
            idx = order[i * batches.train:(i + 1) * batches.train]
            # augmentation is drawn for the whole global batch (the single-process random stream), then each
            # process keeps its share
            x = None if cached is not None else random_shift(train_x[idx], generator) if cfg.augment else train_x[idx]
            if world > 1:
                idx, x = idx[rank::world], None if x is None else x[rank::world]
            y = train_y[idx].to(device, non_blocking=True)
            with _autocast(device):
                if cached is not None:
                    logits = wrapped.logits_from_features(cached[0][idx.to(cached[0].device)])
                else:
                    logits = wrapped(x.to(device, non_blocking=True))
                loss = task_loss(logits.float(), y)
                aux = model.auxiliary_loss()
                total_loss = loss + aux if aux is not None else loss
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if not _finite_everywhere(total_loss, fabric):
                if result.skipped_batches >= cfg.skip_nonfinite:
                    kept = (f"the last good checkpoint (epoch {epoch - 1}) is kept in {checkpoint}"
                            if checkpoint is not None and epoch > 1 else "no epoch had finished")
                    raise NonFiniteLoss(f"non-finite training loss ({total_loss.item()}) at epoch {epoch}, batch "
                                        f"{i + 1}; {kept}; lower --lr, or pass --skip-nonfinite N to skip up to N "
                                        f"bad batches")
                result.skipped_batches += 1
                scheduler.step()  # the schedule stays on its course; the weights are not updated
                continue
            if fabric is not None:
                fabric.backward(total_loss)
            else:
                total_loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item() * len(idx)
            seen += len(idx)
            if on_step:
                on_step(step, cfg.epochs * steps_per_epoch(), running / seen)
        return running, seen

    for epoch in range(first_epoch, cfg.epochs + 1):
        if stopped:
            break
        if model.caches_features and cached is None:  # first epoch pays for the features, once
            cached = tuple(batches.evaluate(lambda b, x=x: backbone_features(model, x, b, device), len(x), "eval",
                                            epoch, epoch - 1) for x in (train_x, val_x))
        if batches.auto:  # the state this epoch starts from, to start it again at a smaller batch size
            epoch_start = {"trainable": _cpu_copy(model.trainable_state_dict()),
                           "optimizer": _cpu_copy(optimizer.state_dict()), "generator": generator.get_state(),
                           "torch_rng": torch.get_rng_state(), "skipped": result.skipped_batches,
                           "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        while True:
            try:
                running, seen = train_epoch(epoch)
                break
            except torch.OutOfMemoryError:
                pass  # leaving the handler frees the failed batch's tensors
            optimizer.zero_grad(set_to_none=True)
            batches.shrink("train", epoch, epoch - 1, len(train))  # raises OutOfMemory unless it may halve
            model.load_trainable_state_dict({k: v.to(device) for k, v in epoch_start["trainable"].items()},
                                            "epoch start")
            optimizer.load_state_dict(epoch_start["optimizer"])
            generator.set_state(epoch_start["generator"])
            torch.set_rng_state(epoch_start["torch_rng"])
            if epoch_start["cuda_rng"] is not None:
                torch.cuda.set_rng_state(epoch_start["cuda_rng"], device)
            result.skipped_batches = epoch_start["skipped"]
            step = (epoch - 1) * steps_per_epoch()  # where a run at this batch size would stand
            scheduler = make_scheduler(step)
        val_result = batches.evaluate(
            lambda b: (evaluate_features(model, cached[1], val.y, b) if cached is not None
                       else evaluate(model, val_x, val.y, b, device)), len(val), "eval", epoch, epoch - 1)
        if not np.isfinite(val_result.probs).all():
            raise NonFiniteLoss(f"non-finite validation outputs at epoch {epoch}: the weights diverged; "
                                + (f"the last good checkpoint (epoch {epoch - 1}) is kept in {checkpoint}; "
                                   if checkpoint is not None and epoch > 1 else "")
                                + "lower --lr")
        val_acc = selection_score(val.y, val_result.probs)
        result.history.append({"epoch": epoch, "train_loss": round(running / seen, 6) if seen else float("nan"),
                               "val_loss": round(val_result.loss, 6), score_name: round(val_acc, 6),
                               "lr": optimizer.param_groups[0]["lr"],
                               "seconds": round(time.perf_counter() - start, 3)})
        if on_epoch:
            on_epoch(result.history[-1])
        if val_acc > best_acc:
            best_acc, stale, result.best_epoch = val_acc, 0, epoch
            best_state = {k: v.detach().clone() for k, v in model.trainable_state_dict().items()}
        else:
            stale += 1
            stopped = stale >= cfg.patience
        if checkpoint is not None and rank == 0:
            save_checkpoint(checkpoint, {
                "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "epoch": epoch, "step": step,
                "stopped": stopped, "best_acc": best_acc, "stale": stale, "best_epoch": result.best_epoch,
                "history": result.history, "skipped_batches": result.skipped_batches,
                "elapsed": time.perf_counter() - start, "trainable": model.trainable_state_dict(),
                "best_state": best_state or {}, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "batch_size": batches.train, "eval_batch_size": batches.eval,
                "batch_size_reductions": batches.reductions})
    result.train_seconds = time.perf_counter() - start
    if best_state is not None:
        model.load_trainable_state_dict(best_state, "best validation epoch")
    return result
