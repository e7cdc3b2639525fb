"""timm ``VisionTransformer`` (DINOv2, BiomedCLIP's trunk, the tiny experts, any timm ViT) as a Backbone."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from timm.models.vision_transformer import VisionTransformer

from medvtab.backbones.base import Backbone
from medvtab.errors import MedvtabError


class ViTBackbone(Backbone):
    architecture = "vit"

    def __init__(self, model: VisionTransformer, **kwargs):
        if not isinstance(model, VisionTransformer):
            raise MedvtabError(f"{kwargs.get('spec')}: medvtab needs a plain ViT (timm VisionTransformer), "
                               f"got {type(model).__name__}")
        if getattr(model, "dynamic_img_size", False):
            model.dynamic_img_size = False  # medvtab fixes each backbone's input size up front
            model.patch_embed.flatten = True  # dynamic mode made patch_embed emit (B, H, W, C) grids
        super().__init__(model, **kwargs)
        self.num_prefix_tokens = model.num_prefix_tokens
        self.has_cls = model.cls_token is not None
        self.grid = tuple(model.patch_embed.grid_size)
        self.patch_size = model.patch_embed.patch_size[0]
        self.width = model.embed_dim
        self.depth = len(model.blocks)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.patch_embed(pixels)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        return m.norm_pre(x)

    def block(self, i, tokens, patch_index=None):
        # Positions are already in the tokens, so a subset runs through the same block unchanged.
        blk = self.model.blocks[i]
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, tokens, use_reentrant=False)
        return blk(tokens)

    def summary(self, tokens):
        m = self.model
        return m.forward_head(m.norm(tokens), pre_logits=True)

    @property
    def summary_reads_cls_only(self) -> bool:
        """True for CLS pooling ("token"): the final norm works per token, so only token 0 matters."""
        m = self.model
        return m.global_pool == "token" and m.attn_pool is None and self.has_cls

    def final_norm(self):
        return nn.ModuleList([self.model.norm, self.model.fc_norm])
