"""``timm:NAME`` and ``timm:NAME@FILE``: any timm ViT, with weights from the hub or from a local file; and
:func:`from_model`, a timm ViT object built in Python (``medvtab.load_backbones``).

NAME is what ``timm.create_model`` takes: an architecture (``vit_base_patch16_224``), an architecture with a
pretrained tag (``vit_base_patch16_224.augreg_in21k``: that tag's weights, input size and normalisation) or a
Hugging Face hub model (``hf-hub:timm/vit_base_patch16_224.augreg_in21k``, whose configuration itself lives on the
hub, so it needs the network even with a local file). ``@`` always starts a local weights file, never a hub
revision. Local files go through timm's own pretrained-loading path (its per-model checkpoint filter, strict
loading); medvtab only points it at the file. The classifier head of the checkpoint is dropped: medvtab trains
its own.
"""
from __future__ import annotations

from pathlib import Path

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import split_model_name_tag
from timm.models.vision_transformer import VisionTransformer

from medvtab.backbones.vit import ViTBackbone
from medvtab.errors import MedvtabError


HUB = "hf-hub:"


def check_name(name: str, spec: str) -> None:
    """A one-line error for an architecture timm does not have, or a pretrained tag it has no weights for
    (hub names are checked by the hub)."""
    if name.startswith(HUB):
        return
    arch, tag = split_model_name_tag(name)
    if arch not in timm.list_models():
        raise MedvtabError(f"{spec}: timm has no model named '{arch}'")
    if tag and name not in timm.list_pretrained(arch + ".*"):
        tags = [n.partition(".")[2] for n in timm.list_pretrained(arch + ".*")]
        raise MedvtabError(f"{spec}: timm has no pretrained tag '{tag}' for '{arch}'; its tags: "
                           f"{', '.join(tags) or 'none'}")


def build(name: str, file, *, spec: str, img_size: int | None = None, depth: int | None = None):
    check_name(name, spec)
    kwargs = {"num_classes": 0}
    if img_size:
        kwargs["img_size"] = img_size
    if depth:
        kwargs["depth"] = depth
    if file is not None:
        if not Path(file).is_file():
            raise MedvtabError(f"{file}: no such checkpoint file")
        kwargs["pretrained_cfg_overlay"] = {"file": str(file), "hf_hub_id": None, "url": None}
    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
    except MedvtabError:
        raise
    except Exception as err:  # noqa: BLE001 - timm reports download and key mismatches in many forms
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if name.startswith(HUB):
            where = f"{spec} (hub download; offline? give the timm architecture with a local file: timm:ARCH@FILE)"
        elif file is not None:
            where = f"{file}"
        else:
            where = f"{spec} (hub download; offline? give a local file: {spec}@FILE)"
        raise MedvtabError(f"{where}: could not load weights: {first[:300]}") from None
    size = img_size or model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    return from_model(model, spec=spec, input_size=size)


def from_model(model: VisionTransformer, *, spec: str, input_size: int | None = None) -> ViTBackbone:
    """A timm ViT as a frozen Backbone (the model itself is frozen): its pretrained config's normalisation
    (ImageNet's where it has none), its patch embedding's input size unless ``input_size`` is given."""
    if input_size is None and isinstance(model, VisionTransformer):
        input_size = model.patch_embed.img_size[0]
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return ViTBackbone(model, spec=spec, input_size=input_size, mean=cfg.get("mean", IMAGENET_DEFAULT_MEAN),
                       std=cfg.get("std", IMAGENET_DEFAULT_STD), random_init=False)
