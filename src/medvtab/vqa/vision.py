"""The frozen vision side: every final token of a medvtab backbone, or of a trained DynaMer pair.

The fusion reads all tokens (not a pooled summary), as BLIP-2's Q-Former cross-attends to the whole patch grid;
``pool`` > 1 averages the patch grid over ``pool x pool`` cells first (prefix tokens such as CLS kept), so the
MLP fusion hands the language model fewer, coarser tokens (a shorter sequence to train on). Nothing here trains, so the tokens of each image can be computed once and cached (:meth:`VisionEncoder.encode`).
"""
from __future__ import annotations

from pathlib import Path

import math

import torch
import torch.nn.functional as F
from torch import nn

from medvtab.backbones import Backbone, load_backbone
from medvtab.backbones.vit import ViTBackbone
from medvtab.engine.run import load_run
from medvtab.errors import MedvtabError

DYNAMER_PREFIX = "dynamer:"


def final_tokens(backbone: Backbone, tokens: torch.Tensor) -> torch.Tensor:
    """The backbone's final norm on every token: a ViT's ``norm`` (what its summary reads the CLS through); SAM has
    no final norm, so the parameter-free layer norm its summary applies after pooling."""
    if isinstance(backbone, ViTBackbone):
        return backbone.model.norm(tokens)
    return F.layer_norm(tokens, tokens.shape[-1:])


class VisionEncoder(nn.Module):
    """uint8 images ``(B, C, H, W)`` -> final tokens ``(B, N, D)``; frozen and always in eval mode.

    ``backbone`` alone: one medvtab backbone. ``dynamer``: a trained :class:`DynaMerModel` whose runner merges both
    streams after every block; each stream's tokens get their own final norm and the two are concatenated per
    token (``D = Dg + Dm``). Where only one stream has prefix tokens (a CLS), the unmatched ones are dropped so
    token ``i`` of both streams is the same patch."""

    def __init__(self, spec: str, backbone: Backbone | None = None, dynamer: nn.Module | None = None,
                 pool: int = 1):
        super().__init__()
        self.spec = spec
        self.backbone, self.dynamer = backbone, dynamer
        if dynamer is not None:
            g, m = dynamer.runner.general, dynamer.runner.medical
            self.prefix = min(g.num_prefix_tokens, m.num_prefix_tokens)
            self.width = g.width + m.width
            self.grid = g.info.grid
            self.input_size = max(g.input_size, m.input_size)
        else:
            self.width = backbone.width
            self.grid = backbone.info.grid
            self.prefix = backbone.info.num_tokens - self.grid[0] * self.grid[1]
            self.input_size = backbone.input_size
        self.pool = pool
        self.pooled_grid = tuple(math.ceil(n / pool) for n in self.grid)
        self.num_tokens = self.prefix + self.pooled_grid[0] * self.pooled_grid[1]
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        """Frozen: evaluation mode whatever the caller asks."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.dynamer is None:
            b = self.backbone
            return self.pooled(final_tokens(b, b.run_blocks(b.embed_images(images))))
        runner = self.dynamer.runner
        xg, xm = runner(images)
        xg = final_tokens(runner.general, xg)[:, runner.general.num_prefix_tokens - self.prefix:]
        xm = final_tokens(runner.medical, xm)[:, runner.medical.num_prefix_tokens - self.prefix:]
        return self.pooled(torch.cat([xg, xm], dim=-1))

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prefix tokens as they are, the patch grid averaged over ``pool x pool`` cells (a ragged edge: smaller
        cells, as adaptive average pooling makes them)."""
        if self.pool == 1:
            return tokens
        b, _, d = tokens.shape
        grid = tokens[:, self.prefix:].transpose(1, 2).reshape(b, d, *self.grid)
        grid = F.adaptive_avg_pool2d(grid, self.pooled_grid).flatten(2).transpose(1, 2)
        return torch.cat([tokens[:, :self.prefix], grid], dim=1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 64,
               device: torch.device = torch.device("cpu")) -> torch.Tensor:
        """Tokens of many images, in batches on ``device`` (where the encoder is), without autograd; returned in
        float32 on the CPU (the cache the fusion trains on)."""
        if len(images) == 0:
            return torch.zeros(0, self.num_tokens, self.width)
        return torch.cat([self(images[i:i + batch_size].to(device)).float().cpu()
                          for i in range(0, len(images), batch_size)])


def load_vision(spec: str, img_size: int | None = None, pool: int = 1) -> VisionEncoder:
    """A backbone spec (``tiny-medical``, ``dinov2-vitb14@FILE``, ...; ``img_size`` resamples its position table),
    or ``dynamer:RUN_DIR`` (a run of ``medvtab train --method dynamer``, at the size it was trained at); ``pool``:
    the patch grid's average pooling (:class:`VisionEncoder`)."""
    if not spec.startswith(DYNAMER_PREFIX):
        return VisionEncoder(spec, backbone=load_backbone(spec, img_size=img_size), pool=pool)
    run = Path(spec.removeprefix(DYNAMER_PREFIX))
    if not run.is_dir():
        raise MedvtabError(f"vision spec '{spec}': {run} is not a run directory")
    model, config, _ = load_run(run)
    if config.get("method") != "dynamer":
        raise MedvtabError(f"vision spec '{spec}': the run's method is '{config.get('method')}', not 'dynamer'")
    encoder = VisionEncoder(spec, dynamer=model, pool=pool)
    if img_size is not None and img_size != encoder.input_size:
        raise MedvtabError(f"vision spec '{spec}': a DynaMer run keeps its input size ({encoder.input_size} px); "
                           f"got --img-size {img_size}")
    return encoder
