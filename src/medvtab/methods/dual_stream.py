"""Two frozen backbones run block by block in lockstep; after block ``l`` a per-layer hook sees both streams.

The hook returns the tokens that go on to block ``l + 1`` and, for block skipping, the patch indices of each
stream that block ``l + 1`` should process (the others bypass it).

Hooks that set ``fast_protocol`` (DynaMer's layers) are called as ``hook(xg, xm, carry=..., needed=...)`` and
return two more values: per stream the rows block ``l + 1`` will run on (prefix, then the kept tokens), already
adapted, so the runner hands them to the block instead of scattering them into the stream and gathering them
again (``carry``; the stream tensor is then stale at exactly those rows, which the block overwrites), and, after
the last block, only what the summaries read (``needed``, see :meth:`DualStreamRunner.final_needed`). Results
are those of the plain protocol; ``fast = False`` runs the plain one (the reference the tests compare with).
"""
from __future__ import annotations

import torch
from torch import nn

from medvtab.backbones import Backbone, check_alignment


class DualStreamRunner(nn.Module):
    def __init__(self, general: Backbone, medical: Backbone, hooks: dict[int, nn.Module]):
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

    def forward(self, images: torch.Tensor, summaries_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images -> the final tokens of both streams. ``summaries_only``: the caller reads nothing but the
        streams' summaries, so a fast hook after the last block may skip tokens no summary reads (evaluation only:
        training keeps everything the auxiliary losses see)."""
        g, m = self.general, self.medical
        xg, xm = g.embed(g.preprocess(images)), m.embed(m.preprocess(images))
        keep_g = keep_m = sub_g = sub_m = None
        fast = self.fast
        inplace = fast and not torch.is_grad_enabled()  # the runner owns every stream tensor after block 0
        last = self.depth - 1
        for i in range(self.depth):
            xg = g.run_block(i, xg, keep_g, sub_g, inplace)
            xm = m.run_block(i, xm, keep_m, sub_m, inplace)
            hook = self.hooks[str(i)] if str(i) in self.hooks else None
            if hook is None:
                keep_g = keep_m = sub_g = sub_m = None
            elif fast and getattr(hook, "fast_protocol", False):
                needed = self.final_needed() if summaries_only and i == last else None
                xg, xm, keep_g, keep_m, sub_g, sub_m = hook(xg, xm, carry=i < last, needed=needed)
            else:
                xg, xm, keep_g, keep_m = hook(xg, xm)
                sub_g = sub_m = None
        return xg, xm

    def merge_start(self, backbone: Backbone) -> int:
        """Index of the first token that merges: the CLS when both streams have one, else the first patch."""
        return 0 if self.merges_cls else backbone.num_prefix_tokens
