"""Two frozen backbones run block by block in lockstep; after block ``l`` a per-layer hook sees both streams.

A hook is a :class:`DualStreamHook`: it returns the tokens that go on to block ``l + 1`` and, where it routes that
block (DynaMer's ``skip_mode: later-blocks``), the patch tokens of each stream block ``l + 1`` runs on
(:class:`Picks`; the others bypass it); else None. A hook that routes its own block (``routes_own_block``, DynaMer's
``skip_mode: block``) chooses them, from the block's input, before the block (``pick``: the first block is routed
too, as in Mixture-of-Depths). Either way the hook gets the choice back with the block's output (``picks``).
With every call the runner also passes :class:`StepHints`, which a hook may use to save work or ignore.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from medvtab.backbones import Backbone, check_alignment
from medvtab.backbones.base import BackboneInfo

STREAMS = ("general", "medical")
ALL_TOKENS = ("all", "all")


def merge_starts(general: BackboneInfo, medical: BackboneInfo, merges_cls: bool) -> list[int]:
    """Per stream, the index of its first token that merges: the CLS when both streams have one, else the first
    patch."""
    return [0 if merges_cls else info.num_prefix_tokens for info in (general, medical)]


class Picks(NamedTuple):
    """A routing hook's choice for its block: per stream the patch indices ``(B, K)`` the block runs on, the
    hook's own record of the choice (handed back to it after the block), and the block's input rows ``(B, P + K,
    D)`` where the hook hands them over (``carry``)."""
    keep: tuple[torch.Tensor, torch.Tensor]
    state: object = None
    rows: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)


class StepHints(NamedTuple):
    """What the runner knows about a step beyond the tokens. A hook gives the same results whether it uses them
    or not; the defaults promise nothing (what a plain run passes)."""
    inplace: bool = False  # the runner owns the stream tensors and autograd is off: they may be written in place
    # The runner runs the next block itself: the hook may hand over that block's input rows in Picks.rows instead
    # of writing them into the stream tensor for the block to gather again (the tensor is stale at those rows
    # until the block's output lands).
    carry: bool = False
    # Per stream, what of the output is read: "all", "cls" (the CLS alone) or "none" (see
    # DualStreamRunner.final_needed).
    needed: tuple[str, str] = ALL_TOKENS


class DualStreamHook(nn.Module):
    """The hook after one block. Subclasses implement :meth:`forward`, and :meth:`pick` where they set
    ``routes_own_block``."""

    routes_own_block: bool = False

    def pick(self, xg: torch.Tensor, xm: torch.Tensor) -> Picks:
        """The tokens this hook's own block runs on, chosen from the block's input (only if ``routes_own_block``)."""
        raise NotImplementedError

    def forward(self, xg: torch.Tensor, xm: torch.Tensor, picks: Picks | None = None,
                hints: StepHints = StepHints()) -> tuple[torch.Tensor, torch.Tensor, Picks | None]:
        """Both streams' block outputs (``picks``: the tokens the block ran on, None: all) -> ``(xg, xm, picks for
        the next block or None)``."""
        raise NotImplementedError


class DualStreamRunner(nn.Module):
    """``fast`` (the default): stream tensors are written in place where autograd is off, and hooks get the
    runner's hints; False runs the plain protocol (the reference the tests compare with)."""

    def __init__(self, general: Backbone, medical: Backbone, hooks: dict[int, DualStreamHook]):
        super().__init__()
        alignment = check_alignment(general.info, medical.info)
        alignment.require()
        self.general, self.medical = general, medical
        self.merges_cls = alignment.merges_cls
        self.depth = general.depth
        self.hooks = nn.ModuleDict({str(i): h for i, h in hooks.items()})
        self.fast = True

    def final_needed(self) -> tuple[str, str]:
        """Per stream, what of the last hook's output reaches the summary: ``"cls"`` (the summary reads the CLS
        alone and the CLS merges), ``"none"`` (it reads the CLS alone, which the hooks never touch) or ``"all"``."""
        out = []
        for backbone in (self.general, self.medical):
            if not backbone.summary_reads_cls_only:
                out.append("all")
            else:
                out.append("cls" if self.merges_cls else "none")
        return out[0], out[1]

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images -> both streams' embedded tokens."""
        return self.general.embed_images(images), self.medical.embed_images(images)

    def hook(self, i: int) -> DualStreamHook | None:
        return self.hooks[str(i)] if str(i) in self.hooks else None

    def block_picks(self, i: int, xg: torch.Tensor, xm: torch.Tensor, handed_on: Picks | None) -> Picks | None:
        """The tokens block ``i`` runs on: those its own hook picks now, else those the previous hook handed on
        (None: all of them)."""
        hook = self.hook(i)
        return hook.pick(xg, xm) if hook is not None and hook.routes_own_block else handed_on

    def step(self, i: int, xg: torch.Tensor, xm: torch.Tensor, picks: Picks | None = None,
             needed: tuple[str, str] = ALL_TOKENS, carry: bool = False):
        """Block ``i`` on both streams (on ``picks``, the choice the previous hook made, or the one this block's
        hook makes now), then its hook -> ``(xg, xm, picks for block i + 1)``. ``needed``: what of the output the
        caller reads; ``carry``: the caller runs block ``i + 1`` with ``step`` (see :class:`StepHints`)."""
        hook = self.hook(i)
        picks = self.block_picks(i, xg, xm, picks)
        (keep_g, keep_m), (rows_g, rows_m) = (picks.keep, picks.rows) if picks is not None else ((None, None),) * 2
        # After embedding, the runner owns every stream tensor: without autograd, subsets are written in place.
        inplace = self.fast and not torch.is_grad_enabled()
        xg = self.general.run_block(i, xg, keep_g, inplace, subset=rows_g)
        xm = self.medical.run_block(i, xm, keep_m, inplace, subset=rows_m)
        if hook is None:
            return xg, xm, None
        return hook(xg, xm, picks, StepHints(inplace, carry, needed) if self.fast else StepHints())

    def forward(self, images: torch.Tensor, summaries_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images -> the final tokens of both streams. ``summaries_only``: the caller reads nothing but the
        streams' summaries, so a hook after the last block may skip tokens no summary reads (evaluation only:
        training keeps everything the auxiliary losses see)."""
        xg, xm = self.embed(images)
        picks = None
        last = self.depth - 1
        for i in range(self.depth):
            needed = self.final_needed() if summaries_only and i == last else ALL_TOKENS
            xg, xm, picks = self.step(i, xg, xm, picks, needed, carry=i < last)
        return xg, xm

