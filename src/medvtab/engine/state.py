"""The training state: everything a run needs to go on from the end of an epoch exactly as if it had never
stopped. One schema (:meth:`TrainState.capture`) serves the epoch checkpoint (``checkpoint.pt``, for
``--resume``) and the snapshot an epoch starts again from after CUDA out of memory (``--auto-batch``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medvtab.atomic import atomic_write
from medvtab.engine.batches import BatchSizes
from medvtab.engine.schedule import warmup_cosine
from medvtab.errors import MedvtabError
from medvtab.methods import AdaptedModel

CHECKPOINT_FORMAT = 3


def cpu_copy(state):
    """A copy of a (nested) state with every tensor cloned to the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: cpu_copy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(cpu_copy(v) for v in state)
    return state


def differing_fields(a, b, prefix: str = "") -> list[str]:
    """Dotted names of the fields where two nested dicts differ (``train.lr``, ``method_config.keep_ratio``)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [prefix] if a != b and prefix else []
    out = []
    for key in sorted(set(a) | set(b), key=str):
        name = f"{prefix}.{key}" if prefix else str(key)
        out += differing_fields(a.get(key), b.get(key), name) if key in a and key in b else [name]
    return out


@dataclass
class TrainState:
    """The live training state of a run (the model's trainable weights, the optimizer, the schedule, the random
    streams, the progress and early-stopping counters, the batch sizes) with :meth:`capture` / :meth:`restore`
    as one plain dict and :meth:`save` / :func:`load_checkpoint` as a file.

    ``epochs``, ``train_images`` and ``processes`` size the schedule: warm-up for a tenth of the run's steps (at
    most an epoch), then cosine decay to zero, over the steps of the current training batch size."""
    model: AdaptedModel
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # data order and augmentation
    batches: BatchSizes
    epochs: int
    train_images: int
    processes: int = 1
    fingerprint: dict | None = None  # what a checkpoint must agree on to be resumed
    epoch: int = 0  # the last finished epoch
    step: int = 0  # optimizer steps taken (skipped bad batches included)
    best_score: float = -1.0
    best_epoch: int = 0
    best_state: dict | None = None  # the trainable weights of the best epoch
    best_val_probs: torch.Tensor | None = None  # the validation probabilities of the best epoch (the weights kept)
    stale: int = 0  # epochs since the best one
    stopped: bool = False  # early stopping
    history: list[dict] = field(default_factory=list)  # one log row per epoch
    skipped_batches: int = 0  # non-finite losses skipped (--skip-nonfinite)
    elapsed: float = 0.0  # training seconds up to the last capture
    scheduler: torch.optim.lr_scheduler.LambdaLR = field(init=False)

    def __post_init__(self):
        self.reschedule()

    @property
    def device(self) -> torch.device:
        return self.batches.device

    def steps_per_epoch(self) -> int:
        return self.batches.steps_per_epoch(self.train_images, self.processes)

    def reschedule(self) -> None:
        """A new schedule over the run's steps at the current training batch size, positioned at ``step``."""
        total = self.epochs * self.steps_per_epoch()
        warmup = max(1, min(self.steps_per_epoch(), total // 10))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: warmup_cosine(step, total, warmup), last_epoch=self.step - 1)

    def end_epoch(self, epoch: int, score: float, patience: int, val_probs: np.ndarray) -> None:
        """Early-stopping bookkeeping after ``epoch`` scored ``score`` on the validation set, whose probabilities
        were ``val_probs``."""
        self.epoch = epoch
        if score > self.best_score:
            self.best_score, self.best_epoch, self.stale = score, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.trainable_state_dict().items()}
            self.best_val_probs = torch.from_numpy(np.array(val_probs, dtype=np.float32))
        else:
            self.stale += 1
            self.stopped = self.stale >= patience

    def capture(self) -> dict:
        """The whole state as tensors, numbers, strings and containers, on the CPU (a copy: training on does not
        change it)."""
        cuda = self.device.type == "cuda"
        return cpu_copy({
            "format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "epoch": self.epoch, "step": self.step,
            "best_score": self.best_score, "best_epoch": self.best_epoch, "best_state": self.best_state,
            "best_val_probs": self.best_val_probs,
            "stale": self.stale, "stopped": self.stopped, "history": self.history,
            "skipped_batches": self.skipped_batches, "elapsed": self.elapsed,
            "trainable": self.model.trainable_state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state(self.device) if cuda else None,
            "batch_size": self.batches.train, "eval_batch_size": self.batches.eval,
            "batch_size_reductions": self.batches.reductions})

    def restore(self, saved: dict) -> None:
        """Go back to a :meth:`capture`-d state, which must be of a run with the same fingerprint. The evaluation
        batch size does not change the result: the smaller of this run's and the saved one is used."""
        if saved["fingerprint"] != self.fingerprint:
            theirs, ours = saved["fingerprint"] or {}, self.fingerprint or {}
            differ = differing_fields(theirs, ours)
            raise MedvtabError(f"option '--resume': the checkpoint was written by a different run (differs in: "
                               f"{', '.join(differ) or 'everything'}); resume with the same options")
        self.batches.train = saved["batch_size"]  # as reduced by --auto-batch
        self.batches.eval = min(self.batches.eval, saved["eval_batch_size"])
        self.batches.reductions = list(saved["batch_size_reductions"])
        self.model.load_trainable_state_dict({k: v.to(self.device) for k, v in saved["trainable"].items()},
                                             "checkpoint")
        self.step = saved["step"]
        self.reschedule()  # for the restored batch size; the optimizer's state then sets the learning rates
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        if saved["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
        self.epoch, self.best_score, self.best_epoch = saved["epoch"], saved["best_score"], saved["best_epoch"]
        self.best_state, self.stale, self.stopped = saved["best_state"], saved["stale"], saved["stopped"]
        self.best_val_probs = saved["best_val_probs"]
        self.history, self.skipped_batches = list(saved["history"]), saved["skipped_batches"]
        self.elapsed = saved["elapsed"]

    def save(self, path: Path) -> None:
        """Atomically: a kill leaves the previous checkpoint or this one, never a torn file."""
        state = self.capture()
        atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    """A :meth:`TrainState.save`-d state. Tensors, numbers, strings and containers only (``weights_only``): a
    checkpoint cannot run code."""
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
