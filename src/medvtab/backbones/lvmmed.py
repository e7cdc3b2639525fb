"""LVM-Med (Nguyen et al. 2023), a medical-domain expert: SAM's ViT-B image encoder trained on 1.3M medical images.

``lvmmed_vit.pth`` is a raw state dict of SAM's ``ImageEncoderViT``: ``mlp.lin1/lin2``, windowed attention with
global blocks 2, 5, 8, 11, relative position tables, an absolute ``pos_embed`` of shape (1, 64, 64, 768) for
1024 px, and a ``neck`` that medvtab loads (strictly) but does not use. timm's ``samvit_base_patch16`` hosts it
once keys are renamed and position tables resized for the input size (224 px -> a 14x14 grid by default), with
SAM's own LayerNorm eps (1e-6; timm's default is 1e-5).
"""
from __future__ import annotations

from functools import partial

import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from medvtab.backbones.checkpoint import load_strict, read_state_dict
from medvtab.backbones.sam import SamBackbone

DEFAULT_INPUT_SIZE = 224
SAM_LAYER_NORM_EPS = 1e-6  # segment_anything's build_sam; the features differ (~1e-5 relative) under timm's 1e-5
# Med-VTAB tasks that are in LVM-Med's pre-training collection: evaluating on them leaks.
PRETRAINED_ON = ("hyperkvasir", "kvasir", "isic", "aptos", "eyepacs")


def _resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linear interpolation along the relative-distance axis, as SAM itself does at run time."""
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.t().unsqueeze(0), size=length, mode="linear", align_corners=False)
    return resized.squeeze(0).t().contiguous()


def convert_lvmmed(state_dict: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """SAM/LVM-Med encoder layout -> timm ``VisionTransformerSAM`` at ``model``'s grid."""
    expected = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("image_encoder.").replace(".mlp.lin", ".mlp.fc")
        if key.endswith(("attn.rel_pos_h", "attn.rel_pos_w")) and key in expected:
            value = _resize_rel_pos(value, expected[key].shape[0])
        out[key] = value
    pos = out.get("pos_embed")
    if pos is not None and pos.ndim == 4 and pos.shape != model.pos_embed.shape:
        grid = model.pos_embed.shape[1:3]
        out["pos_embed"] = F.interpolate(pos.permute(0, 3, 1, 2), size=grid, mode="bicubic",
                                         align_corners=False).permute(0, 2, 3, 1).contiguous()
    return out


def build(variant: str, file, *, spec: str, img_size: int | None = None, depth: int | None = None):
    size = img_size or DEFAULT_INPUT_SIZE
    kwargs = {}
    if depth:  # depth-reduced variants (tests): keep SAM's pattern of a global block every third
        kwargs = {"depth": depth, "global_attn_indexes": tuple(i for i in range(depth) if i % 3 == 2)}
    model = timm.create_model("samvit_base_patch16", pretrained=False, num_classes=0, img_size=size,
                              norm_layer=partial(nn.LayerNorm, eps=SAM_LAYER_NORM_EPS), **kwargs)
    load_strict(model, convert_lvmmed(read_state_dict(file), model), spec)
    model.neck = nn.Identity()  # loaded for strictness, never used: blocks' tokens are what DynaMer merges
    return SamBackbone(model, spec=spec, input_size=size, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                       random_init=False, pretrained_on=PRETRAINED_ON)
