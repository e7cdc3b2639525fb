"""DINOv2 (Oquab et al. 2023), Meta's general-domain expert, from a local checkpoint.

Accepts timm's key layout and Meta's original hub layout (``mask_token``, ``blocks.N.ls1.gamma``, position
embeddings for 518 px). Default input 196 px = a 14x14 grid of 14 px patches, to align with 16 px backbones
at 224 px. The 37x37 position table is resampled to the input's grid the way Meta's model does it at run time
(:func:`resample_pos_embed`), for both layouts: both are DINOv2, and the paper ran Meta's code.
"""
from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from medvtab.backbones.checkpoint import load_strict, read_state_dict
from medvtab.backbones.vit import ViTBackbone

VARIANTS = {
    "dinov2-vits14": "vit_small_patch14_dinov2",
    "dinov2-vitb14": "vit_base_patch14_dinov2",
    "dinov2-vitl14": "vit_large_patch14_dinov2",
}
DEFAULT_INPUT_SIZE = 196
# LVD-142M is a curated web collection: no medical benchmark is known to be in it.
PRETRAINED_ON = ("lvd-142m",)


# Meta's DinoVisionTransformer defaults: interpolate_offset=0.1, interpolate_antialias=False.
INTERPOLATE_OFFSET = 0.1


def resample_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, 1 + M*M, C) -> (1, 1 + gh*gw, C) by Meta's ``interpolate_pos_encoding``: bicubic in float32, no
    antialiasing, with the scale factors ``(g + 0.1) / M`` rather than an output size (which rounds to the
    same grid but samples at other positions than timm's ``resample_abs_pos_embed``: 2.5 % apart at 196 px)."""
    cls, patches = pos[:, :1], pos[:, 1:]
    side = math.isqrt(patches.shape[1])
    table = patches.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    scale = tuple((g + INTERPOLATE_OFFSET) / side for g in grid)
    table = F.interpolate(table, scale_factor=scale, mode="bicubic", antialias=False)
    if tuple(table.shape[-2:]) != tuple(grid):
        raise ValueError(f"position table resampled to {tuple(table.shape[-2:])}, expected {tuple(grid)}")
    return torch.cat([cls.float(), table.permute(0, 2, 3, 1).reshape(1, -1, table.shape[1])], 1).to(pos.dtype)


def convert_dinov2(state_dict: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """Meta's hub layout (or timm's) -> timm's layout at ``model``'s grid."""
    out = dict(state_dict)
    out.pop("mask_token", None)  # iBOT's mask embedding, used only in pre-training
    pos = out.get("pos_embed")
    target = model.pos_embed
    if pos is not None and pos.ndim == 3 and pos.shape != target.shape:
        out["pos_embed"] = resample_pos_embed(pos, tuple(model.patch_embed.grid_size))
    return out


def build(variant: str, file, *, spec: str, img_size: int | None = None, depth: int | None = None):
    size = img_size or DEFAULT_INPUT_SIZE
    kwargs = {"depth": depth} if depth else {}
    model = timm.create_model(VARIANTS[variant], pretrained=False, num_classes=0, img_size=size, **kwargs)
    load_strict(model, convert_dinov2(read_state_dict(file), model), spec)
    return ViTBackbone(model, spec=spec, input_size=size, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                       random_init=False, pretrained_on=PRETRAINED_ON)
