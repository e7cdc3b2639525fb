"""The batch sizes a run trains and evaluates at, and what CUDA out of memory does to them."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from medvtab.errors import MedvtabError


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

    def steps_per_epoch(self, images: int, processes: int) -> int:
        """Optimizer steps in an epoch over ``images`` training images at the training batch size (a last batch
        too small to give each of the ``processes`` one image is dropped)."""
        steps = math.ceil(images / self.train)
        if 0 < images % self.train < processes:
            steps -= 1
        return steps

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
