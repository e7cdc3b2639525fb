"""``random:NAME``: a backbone in a real checkpoint layout from random weights, for measuring speed (which does not
depend on the values) without the checkpoint, e.g. ``random:dinov2-vitb14`` + ``random:lvmmed-vitb``, the paper's
ViT-B pair. Each at its layout's default input size (DINOv2 196 px, LVM-Med 224 px: both a 14x14 grid).
"""
from __future__ import annotations

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from medvtab.backbones import dinov2, lvmmed
from medvtab.backbones.base import Backbone
from medvtab.backbones.sam import SamBackbone
from medvtab.backbones.vit import ViTBackbone
from medvtab.errors import MedvtabError

LAYOUTS = ("dinov2-vits14", "dinov2-vitb14", "dinov2-vitl14", "lvmmed-vitb")
SEED = 0


def build(layout: str, file: str | None = None, *, spec: str | None = None, img_size: int | None = None,
          depth: int | None = None, device: str | torch.device = "cpu") -> Backbone:
    """The ``layout`` (a name of :data:`LAYOUTS`) seeded with :data:`SEED`, without touching the global RNG, its
    parameters created on ``device`` (``meta``: shapes only, for counting FLOPs)."""
    spec = spec or f"random:{layout}"
    if layout not in LAYOUTS:
        raise MedvtabError(f"unknown random layout '{spec}'; expected one of: "
                           + ", ".join(f"random:{n}" for n in LAYOUTS))
    if file is not None:
        raise MedvtabError(f"backbone '{spec}' is random weights: it takes no weights file (got '@{file}')")
    norm = dict(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, random_init=True)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(SEED)
        if layout.startswith("dinov2"):
            size = img_size or dinov2.DEFAULT_INPUT_SIZE
            kwargs = {"depth": depth} if depth else {}
            model = timm.create_model(dinov2.VARIANTS[layout], pretrained=False, num_classes=0, img_size=size,
                                      **kwargs)
            return ViTBackbone(model, spec=spec, input_size=size, **norm)
        size = img_size or lvmmed.DEFAULT_INPUT_SIZE
        kwargs = {}
        if depth:  # as lvmmed.build: a global-attention block every third
            kwargs = {"depth": depth, "global_attn_indexes": tuple(i for i in range(depth) if i % 3 == 2)}
        model = timm.create_model("samvit_base_patch16", pretrained=False, num_classes=0, img_size=size, **kwargs)
        model.neck = nn.Identity()
        return SamBackbone(model, spec=spec, input_size=size, **norm)
