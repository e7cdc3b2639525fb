"""Backbones by spec string, the same on the command line and in Python.

``timm:NAME[@FILE]``, ``dinov2-vit{s,b,l}14@FILE``, ``lvmmed-vitb@FILE``, ``biomedclip-vitb16@FILE``,
``tiny-general[@FILE]``, ``tiny-medical[@FILE]``, ``tiny-radiology[@FILE]`` (bundled pre-trained weights, or a ``medvtab pretrain`` file),
``random:NAME`` (a real layout from random weights: :mod:`medvtab.backbones.random_init`).
"""
from __future__ import annotations

from medvtab.backbones import biomedclip, dinov2, lvmmed, random_init, timm_any, tiny
from medvtab.backbones.align import PairAlignment, check_alignment
from medvtab.backbones.base import Backbone, BackboneInfo
from medvtab.errors import MedvtabError

# name -> (builder, weights file: True = required, False = refused, None = optional)
_REGISTRY = {
    **{name: (dinov2.build, True) for name in dinov2.VARIANTS},
    "lvmmed-vitb": (lvmmed.build, True),
    "biomedclip-vitb16": (biomedclip.build, True),
    "tiny-general": (tiny.build, None),
    "tiny-medical": (tiny.build, None),
    "tiny-radiology": (tiny.build, None),
}


def list_backbones() -> list[str]:
    return (sorted(_REGISTRY) + [f"{v}@FILE" for v in tiny.VARIANTS] + ["timm:NAME", "timm:NAME@FILE"]
            + [f"random:{name}" for name in random_init.LAYOUTS])


def refuse_download(spec: str) -> None:
    """A MedvtabError where ``spec``'s weights would be downloaded (``timm:NAME`` without a local file, and any
    ``timm:hf-hub:NAME``, whose configuration is on the hub)."""
    hub = spec.startswith("timm:" + timm_any.HUB)
    if spec.startswith("timm:") and ("@" not in spec or hub):
        local = "timm:ARCH@FILE, the architecture with a local file" if hub else f"{spec}@FILE"
        raise MedvtabError(f"{spec}: its weights would be downloaded from the hub, and loading a run never "
                           f"downloads unless asked: pass --allow-download, or give a local file ({local})")


def load_backbone(spec: str, *, img_size: int | None = None, depth: int | None = None,
                  allow_download: bool = True) -> Backbone:
    """Build a frozen backbone from its spec. ``img_size`` overrides the default input size; ``depth``
    builds a depth-reduced variant (for tests) whose checkpoint must hold exactly that many blocks.
    ``allow_download=False``: a spec whose weights would come from a hub (``timm:NAME``) is an error instead
    (loading a run directory never reaches the network unless asked)."""
    if not allow_download:
        refuse_download(spec)
    name, _, file = spec.partition("@")
    file = file or None
    if name.startswith("timm:"):
        return timm_any.build(name.removeprefix("timm:"), file, spec=spec, img_size=img_size, depth=depth)
    if name.startswith("random:"):
        return random_init.build(name.removeprefix("random:"), file, spec=spec, img_size=img_size, depth=depth)
    if name not in _REGISTRY:
        raise MedvtabError(f"unknown backbone spec '{spec}'; expected one of: {', '.join(list_backbones())}")
    builder, needs_file = _REGISTRY[name]
    if needs_file is True and file is None:
        raise MedvtabError(f"backbone '{name}' needs a weights file: {name}@PATH")
    if needs_file is False and file is not None:
        raise MedvtabError(f"backbone '{name}' takes no weights file (got '@{file}')")
    return builder(name, file, spec=spec, img_size=img_size, depth=depth)


__all__ = ["Backbone", "BackboneInfo", "PairAlignment", "check_alignment", "list_backbones", "load_backbone",
           "refuse_download"]
