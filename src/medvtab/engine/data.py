"""The streaming data path: images reach the model a batch at a time, read from the split's array (a prepared
task's memory map, or an array in memory) by a ``torch.utils.data.DataLoader``, in worker processes where
``num_workers`` asks for them, pinned for a CUDA device. No pass holds a whole split as a tensor.

Every random draw stays in the main process, in the order the run has always made them: the epoch's order
(``torch.randperm`` from the run's generator), then, batch by batch, a shift for every image of the global batch
(:class:`EpochBatches`). Workers only read an image and shift it by the offsets they are handed, so the worker
count cannot change a result, and a resumed run draws what an uninterrupted one draws. Under DDP each process
keeps its share of every global batch (``rank::world``), as the single-process random stream fixes it: a
``DistributedSampler`` is not used (it would draw its own order).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

# Features of a feature-caching method above this size go to a memory-mapped file instead of memory (the kernel
# can drop its pages): 256 MiB is ViT-B's 768 float32 features of ~87,000 images.
FEATURES_IN_MEMORY_BYTES = 256 << 20


def shift_pad(height: int) -> int:
    """The reflect padding of the training shift: up to 1/8 of the image's height each way."""
    return max(1, height // 8)


def shift(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Light augmentation of one (C, H, W) image: reflect-padded by :func:`shift_pad` on every side, then the
    (H, W) window at (``dy``, ``dx``), each in ``0 .. 2 * pad``. No flips: laterality matters in medical images."""
    _, h, w = image.shape
    return TF.crop(TF.pad(image, [shift_pad(h)], padding_mode="reflect"), dy, dx, h, w)


class SplitImages(Dataset):
    """A split's ``(N, H, W, C)`` uint8 images as a dataset of ``((C, H, W) uint8 tensor, position)``. An item is
    a position, or ``(position, dy, dx)``: that image :func:`shift`-ed."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item) -> tuple[torch.Tensor, int]:
        position, offsets = (item[0], item[1:]) if isinstance(item, tuple) else (item, None)
        image = torch.from_numpy(np.array(self.images[position], dtype=np.uint8)).permute(2, 0, 1)
        image = image if offsets is None else shift(image, *offsets)
        return image.contiguous(), position  # batches stack as (B, C, H, W) in the default layout


class EpochBatches(Sampler):
    """One process's training batches of an epoch: ``steps`` global batches of ``size`` positions of ``order``,
    each (where ``pad`` is given) with a shift per image drawn from ``generator`` for the whole global batch, then
    the process's share ``rank::world``. Drawn lazily, batch by batch, in the main process."""

    def __init__(self, order: torch.Tensor, size: int, steps: int, generator: torch.Generator, pad: int | None,
                 rank: int = 0, world: int = 1):
        self.order, self.size, self.steps, self.generator = order, size, steps, generator
        self.pad, self.rank, self.world = pad, rank, world

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list]:
        for i in range(self.steps):
            positions = self.order[i * self.size:(i + 1) * self.size].tolist()
            if self.pad is None:
                yield positions[self.rank::self.world]
                continue
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2, len(positions)), generator=self.generator).tolist()
            yield list(zip(positions, dy, dx))[self.rank::self.world]


def loader(images: np.ndarray, batches, num_workers: int, device: torch.device) -> DataLoader:
    """A DataLoader of ``(images (B, C, H, W) uint8, positions (B,))`` over ``batches`` (lists of
    :class:`SplitImages` items); workers end with the pass, batches are pinned for CUDA. Its own generator: the
    loader's seed draw must not move the global random stream (dropout, noise), which would tie results to
    whether and how often a loader is made."""
    return DataLoader(SplitImages(images), batch_sampler=batches, num_workers=num_workers,
                      pin_memory=device.type == "cuda", persistent_workers=False,
                      generator=torch.Generator().manual_seed(0))


def in_order(images: np.ndarray, batch_size: int, num_workers: int, device: torch.device) -> DataLoader:
    """The images in order, ``batch_size`` at a time (evaluation, features), as :func:`loader` batches."""
    return loader(images, BatchSampler(SequentialSampler(range(len(images))), batch_size, drop_last=False),
                  num_workers, device)


def feature_store(rows: int, shape: tuple[int, ...], device: torch.device, spill_dir: Path | None) -> torch.Tensor:
    """Where ``rows`` features of ``shape`` are written: a tensor on ``device``, or, past
    :data:`FEATURES_IN_MEMORY_BYTES`, a float32 memory map of an unnamed file in ``spill_dir`` (the system's
    temporary folder where None; nothing is left behind, even after a kill) whose pages the kernel can drop."""
    size = rows * int(np.prod(shape)) * 4
    if size <= FEATURES_IN_MEMORY_BYTES:
        return torch.empty((rows, *shape), dtype=torch.float32, device=device)
    with tempfile.TemporaryFile(dir=spill_dir) as file:  # the map keeps its own reference to the file
        return torch.from_numpy(np.memmap(file, dtype=np.float32, mode="w+", shape=(rows, *shape)))
