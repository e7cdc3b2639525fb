"""``tiny-general``, ``tiny-medical`` and ``tiny-radiology``: small ViTs (width 96, 4 blocks) for laptops and tests.

``tiny-general`` and ``tiny-medical`` share one architecture (28 px, 4 px patches, a 7x7 grid), so they always
align; ``tiny-radiology`` sees 64 px images in 8 px patches (an 8x8 grid), where organs and modalities are
visible, for the MedVQA vision side. All three ship pre-trained with the package (``assets/experts/*.safetensors``,
made by ``medvtab pretrain``; ``assets/experts/MODEL_CARD.md`` says how): ``tiny-general`` on CIFAR-10
(general-domain photographs), ``tiny-medical`` on PBC blood-cell microscopy, ``tiny-radiology`` on Kermany chest
X-rays and the SLAKE and VQA-RAD training images (:mod:`medvtab.vqa.radiology`). ``VARIANT@FILE`` loads a file
written by ``medvtab pretrain`` instead, strictly; the data set it was pre-trained on is read from the file's
metadata (for the leakage guard).

Overrides for tests: ``img_size`` resamples the position table to the new grid; ``depth`` keeps the first
``depth`` blocks of the bundled weights (a file given with ``@FILE`` must hold exactly that many blocks).
:func:`new_model` gives the seeded random-init twin of the same shape (the linear-probe baseline).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from safetensors import safe_open
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from medvtab.backbones.checkpoint import load_strict, read_state_dict
from medvtab.backbones.vit import ViTBackbone

ARCH = dict(img_size=28, patch_size=4, embed_dim=96, depth=4, num_heads=3, mlp_ratio=4.0, num_classes=0)
ARCHS = {"tiny-general": ARCH, "tiny-medical": ARCH, "tiny-radiology": dict(ARCH, img_size=64, patch_size=8)}
SEEDS = {"tiny-general": 1, "tiny-medical": 2, "tiny-radiology": 3}  # the random-init twins
MEAN = STD = (0.5, 0.5, 0.5)
# What the bundled weights were pre-trained on; names are task names where the registry has them (kermany-cxr
# shares its source images with pneumoniamnist, which the leakage guard knows).
PRETRAINED_ON = {"tiny-general": ("cifar10",), "tiny-medical": ("pbc",),
                 "tiny-radiology": ("kermany-cxr", "slake", "vqa-rad")}
VARIANTS = tuple(SEEDS)
META_PRETRAINED_ON = "medvtab.pretrained_on"  # safetensors metadata key written by `medvtab pretrain`


def bundled_weights(variant: str) -> Path:
    return Path(str(resources.files("medvtab") / "assets" / "experts" / f"{variant}.safetensors"))


def new_model(variant: str, *, img_size: int | None = None, depth: int | None = None) -> VisionTransformer:
    """The architecture, initialised from the variant's fixed seed (without touching the global RNG)."""
    arch = dict(ARCHS[variant], **({"depth": depth} if depth else {}), **({"img_size": img_size} if img_size else {}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEEDS[variant])
        return VisionTransformer(**arch)


def file_pretrained_on(path: str | Path) -> tuple[str, ...]:
    """The data sets a ``medvtab pretrain`` file records in its metadata (empty for other files)."""
    if Path(path).suffix != ".safetensors":
        return ()
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return tuple(n for n in meta.get(META_PRETRAINED_ON, "").split(",") if n)


def build(variant: str, file, *, spec: str, img_size: int | None = None, depth: int | None = None):
    model = new_model(variant, img_size=img_size, depth=depth)
    if file is None:
        state = read_state_dict(bundled_weights(variant))
        if depth:  # a shallower test variant: the first `depth` pre-trained blocks
            state = {k: v for k, v in state.items()
                     if not k.startswith("blocks.") or int(k.split(".")[1]) < depth}
        pretrained_on = PRETRAINED_ON[variant]
    else:
        state = read_state_dict(file)
        pretrained_on = file_pretrained_on(file)
    pos = state.get("pos_embed")
    if img_size and pos is not None and pos.ndim == 3 and pos.shape != model.pos_embed.shape:
        state["pos_embed"] = resample_abs_pos_embed(pos, new_size=model.patch_embed.grid_size,
                                                    num_prefix_tokens=model.num_prefix_tokens)
    load_strict(model, state, spec)
    return ViTBackbone(model, spec=spec, input_size=model.patch_embed.img_size[0], mean=MEAN, std=STD,
                       random_init=False, pretrained_on=pretrained_on)
