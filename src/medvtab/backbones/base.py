"""A frozen ViT exposed block by block, so two of them can run in lockstep.

Tokens always travel as ``(B, P + N, D)``: ``P`` prefix tokens (CLS, registers) then ``N`` patch tokens in
row-major grid order. A block can run on all tokens or, for block skipping, on the prefix plus a subset of
patch tokens given by their grid indices.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


def _flat_rows(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Row numbers of ``tokens.flatten(0, 1)`` for a per-image ``(B, K)`` token index."""
    offsets = torch.arange(index.shape[0], device=index.device).unsqueeze(1) * tokens.shape[1]
    return (index + offsets).flatten()


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tokens[b, index[b, k]]`` for a ``(B, K)`` index: one fixed-shape row selection (``index_select`` on
    the flattened batch copies whole rows, several times faster on CPU than ``gather`` with an expanded index)."""
    rows = tokens.flatten(0, 1).index_select(0, _flat_rows(tokens, index))
    return rows.view(index.shape[0], index.shape[1], tokens.shape[-1])


def scatter_tokens(tokens: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A copy of ``tokens`` with rows ``index`` replaced by ``values`` (out of place, autograd-safe)."""
    flat = tokens.flatten(0, 1).index_copy(0, _flat_rows(tokens, index), values.flatten(0, 1))
    return flat.view_as(tokens)


def put_tokens(tokens: torch.Tensor, index: torch.Tensor, values: torch.Tensor, inplace: bool) -> torch.Tensor:
    """:func:`scatter_tokens`, or with ``inplace`` (only where autograd is off and the caller owns ``tokens``) the
    rows written into ``tokens`` itself: the same values without copying the whole tensor."""
    if not (inplace and tokens.is_contiguous()):
        return scatter_tokens(tokens, index, values)
    tokens.view(-1, tokens.shape[-1]).index_copy_(0, _flat_rows(tokens, index), values.flatten(0, 1))
    return tokens


@dataclass(frozen=True)
class BackboneInfo:
    spec: str
    architecture: str
    input_size: int
    patch_size: int
    grid: tuple[int, int]
    num_prefix_tokens: int
    has_cls: bool
    width: int
    depth: int
    params: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    random_init: bool
    pretrained_on: tuple[str, ...] = field(default_factory=tuple)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.num_patches


class Backbone(nn.Module):
    """Base class: preprocessing, freezing and subset execution; subclasses wrap one timm family."""

    def __init__(self, model: nn.Module, *, spec: str, input_size: int, mean, std,
                 random_init: bool, pretrained_on: tuple[str, ...] = ()):
        super().__init__()
        self.model = model
        self.spec = spec
        self.input_size = input_size
        self.random_init = random_init
        self.pretrained_on = tuple(pretrained_on)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.model.requires_grad_(False)
        self.model.eval()

    # Recompute each block in the backward pass instead of keeping its activations (less memory for adapters
    # that train through frozen blocks, about one more forward of compute); only where autograd records.
    grad_checkpointing = False

    # --- what subclasses provide -------------------------------------------------------------------
    architecture = "vit"
    num_prefix_tokens: int
    has_cls: bool
    grid: tuple[int, int]
    width: int
    depth: int
    patch_size: int

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels ``(B, 3, S, S)`` -> tokens ``(B, P + N, D)`` with positions added."""
        raise NotImplementedError

    def block(self, i: int, tokens: torch.Tensor, patch_index: torch.Tensor | None = None) -> torch.Tensor:
        """Run block ``i`` on ``tokens`` = prefix + patches (all of them, or those at ``patch_index``)."""
        raise NotImplementedError

    def summary(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final normed summary token ``(B, D)``: the CLS token, or the mean of patch tokens without one."""
        raise NotImplementedError

    @property
    def summary_reads_cls_only(self) -> bool:
        """Whether :meth:`summary` reads token 0 alone (then nothing after the last block needs the others)."""
        return False

    def final_norm(self) -> nn.Module:
        """The module holding the parameters applied after the last block (trained by partial tuning)."""
        raise NotImplementedError

    # --- shared machinery ---------------------------------------------------------------------------
    def train(self, mode: bool = True):
        """Backbones stay in eval mode (frozen statistics, no dropout) whatever the wrapper does."""
        super().train(mode)
        self.model.eval()
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, C, H, W)`` (C = 1 or 3) -> float, resized to this backbone's size, normalised."""
        x = images.float().div_(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.input_size, self.input_size):
            downsampling = x.shape[-1] > self.input_size
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=downsampling)
        return (x - self.mean) / self.std

    def block_rows(self, keep: torch.Tensor) -> torch.Tensor:
        """Token rows ``(B, P + K)`` a subset block runs on: the prefix, then the patch tokens at ``keep``."""
        p = self.num_prefix_tokens
        if not p:
            return keep
        prefix = torch.arange(p, device=keep.device, dtype=keep.dtype).expand(keep.shape[0], p)
        return torch.cat([prefix, keep + p], dim=1)

    def run_block(self, i: int, tokens: torch.Tensor, keep: torch.Tensor | None = None,
                  inplace: bool = False, subset: torch.Tensor | None = None) -> torch.Tensor:
        """Block ``i`` on all tokens, or only on the prefix plus the patch tokens at ``keep`` (B, K):
        the others pass through unchanged (block skipping). ``inplace``: write the kept rows' results into
        ``tokens`` itself (the caller owns it and autograd is off). ``subset``: the block's input rows ``(B, P +
        K, D)`` (prefix, then the kept tokens) where the caller already holds them (``tokens`` then only supplies
        the skipped rows). Either way the values are those of the plain path: one gather, the block, one scatter."""
        if keep is None:
            return self.block(i, tokens)
        rows = self.block_rows(keep)
        out = self.block(i, gather_tokens(tokens, rows) if subset is None else subset, keep)
        return put_tokens(tokens, rows, out, inplace)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the first block's input tokens (:meth:`preprocess`, then :meth:`embed`)."""
        return self.embed(self.preprocess(images))

    def run_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        """Every block, in order, on all of ``tokens`` -> the last block's output."""
        for i in range(self.depth):
            tokens = self.block(i, tokens)
        return tokens

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.summary(self.run_blocks(self.embed_images(images)))

    @property
    def info(self) -> BackboneInfo:
        return BackboneInfo(
            spec=self.spec, architecture=self.architecture, input_size=self.input_size,
            patch_size=self.patch_size, grid=self.grid, num_prefix_tokens=self.num_prefix_tokens,
            has_cls=self.has_cls, width=self.width, depth=self.depth,
            params=sum(p.numel() for p in self.model.parameters()),
            mean=tuple(self.mean.flatten().tolist()), std=tuple(self.std.flatten().tolist()),
            random_init=self.random_init, pretrained_on=self.pretrained_on,
        )
