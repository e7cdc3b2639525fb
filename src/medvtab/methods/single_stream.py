"""The single-backbone model: one backbone, a linear head on its final summary token.

Methods that change the backbone (full, partial, adapters, LoRA) work on a copy of it, so the backbone a
caller passes in is never modified.
"""
from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from medvtab.backbones import Backbone
from medvtab.errors import MedvtabError
from medvtab.methods.base import AdaptedModel, MethodConfig


class SingleBackboneConfig(MethodConfig):
    backbone: Literal["general", "medical"] = Field("general", description="which backbone the method adapts")


def private_copy(backbone: Backbone) -> Backbone:
    """A deep copy the method may modify (inject modules, unfreeze) without touching the caller's."""
    return copy.deepcopy(backbone)


def require_sequence_vit(backbone: Backbone, method: str) -> None:
    """Prompt methods add tokens with no grid position; SAM's windowed blocks need every token on the grid."""
    if backbone.architecture != "vit":
        raise MedvtabError(f"method '{method}' needs a plain ViT backbone; '{backbone.spec}' is a "
                           f"{backbone.architecture} encoder (pick the other one with --backbone)")


class SingleStreamModel(AdaptedModel):
    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.width, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        return b.summary(b.run_blocks(b.embed_images(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
