"""Single-backbone adapters: the Pfeiffer bottleneck adapter and LoRA (through peft).

**Adapter** (Pfeiffer et al. 2020, the "Pfeiffer" configuration of AdapterFusion): one bottleneck adapter per
block, after the block's FFN and inside its residual branch:

    h = FFN(LN(x));   h <- h + W_up(ReLU(W_down h));   x <- x + h

``W_down``: width -> ``bottleneck``, ``W_up``: ``bottleneck`` -> width (both with bias). Pfeiffer's
configuration has the adapter only after the FFN (none after attention) and a ReLU non-linearity. Written for
pre-LN ViTs, where the FFN output ``h`` is what the block adds back to its residual stream, the adapter is
injected by wrapping ``blk.mlp`` of a private copy of the backbone, so it works unchanged for timm ViT and SAM
blocks (both call ``self.mlp(self.norm2(x))``). Choices where the paper is silent or does not apply:

* ``W_up`` starts at zero (weights and bias), so the adapted backbone starts as exactly the frozen one
  (Houlsby et al.'s near-identity initialisation taken to its limit); ``W_down`` keeps PyTorch's default init.
* ``bottleneck`` defaults to 768 (reduction factor 1 on ViT-B), not Pfeiffer's reduction factor 16: the
  Med-VTAB / DynaMer tables report the adapter at 1.17X "Total Params" on ViT-B, and 768 is the round width
  that reproduces that budget (1.1655X on DINOv2 ViT-B/14 at 196 px with a 2-class head). Reduction factor 16
  (``bottleneck=48``) gives 1.0105X.

``adapter-general`` and ``adapter-medical`` are two names for the same method; the name fixes the backbone.

**LoRA** (Hu et al. 2022), injected with ``peft`` into the copy's timm model: every ``nn.Linear`` inside the blocks
whose name ends with one of ``target_modules`` (default ``qkv``, the fused query/key/value projection of every block, as
LoRA adapts W_q and W_v; timm fuses them with W_k) becomes ``W x + (alpha / r) B A x`` with ``A`` random
(peft's Kaiming-uniform, as Microsoft's loralib) and ``B`` zero, so training starts from the frozen backbone.
``alpha`` defaults to 8 = the default ``r`` (Hu et al. set alpha to the first r they tried and do not tune it,
so scale 1 at r = 8; changing ``r`` keeps alpha fixed). ``LoRAModel.merge()`` folds ``(alpha / r) B A`` into
the frozen weights (peft's merge) for inference at the backbone's own cost.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from medvtab.backbones import Backbone
from medvtab.errors import MedvtabError
from medvtab.methods.base import register_method
from medvtab.methods.single_stream import SingleBackboneConfig, SingleStreamModel, private_copy

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


# --- the bottleneck adapter, shared with the dual-stream methods -----------------------------------------

class BottleneckAdapter(nn.Module):
    """``W_up(act(W_down h))``: ``in_width`` -> ``bottleneck`` -> ``out_width`` (default ``in_width``), with
    ``W_up`` zero-initialised, so the adapter outputs exactly 0 until it trains."""

    def __init__(self, in_width: int, bottleneck: int, activation: str = "relu", out_width: int | None = None):
        super().__init__()
        self.down = nn.Linear(in_width, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, out_width or in_width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(h)))


class AdaptedMlp(nn.Module):
    """A block's FFN followed by a Pfeiffer adapter on its output: ``h = mlp(x); h + adapter(h)``."""

    def __init__(self, mlp: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        self.mlp = mlp
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp(x)
        return h + self.adapter(h)


def inject_pfeiffer_adapters(backbone: Backbone, bottleneck: int, activation: str = "relu") -> list[BottleneckAdapter]:
    """Wrap every block's ``mlp`` of ``backbone`` **in place** (pass a private copy) and return the adapters,
    one per block, in block order. The adapters are trainable; everything else stays frozen."""
    adapters = []
    for blk in backbone.model.blocks:
        if isinstance(blk.mlp, AdaptedMlp):
            raise MedvtabError(f"backbone '{backbone.spec}' already has adapters")
        adapter = BottleneckAdapter(backbone.width, bottleneck, activation)
        blk.mlp = AdaptedMlp(blk.mlp, adapter)
        adapters.append(adapter)
    return adapters


# --- adapter-general / adapter-medical ---------------------------------------------------------------------

class AdapterConfig(SingleBackboneConfig):
    """``adapter-general``: the general backbone is adapted (``backbone`` may only be 'general')."""

    fixed_backbone: ClassVar[str] = "general"
    bottleneck: int = Field(768, ge=1, description="adapter hidden width (768 on ViT-B = the papers' 1.17X)")
    activation: Literal["relu", "gelu"] = Field("relu", description="Pfeiffer et al. use ReLU")

    @field_validator("backbone")
    @classmethod
    def _backbone_fixed_by_name(cls, value: str) -> str:
        if value != cls.fixed_backbone:
            raise ValueError(f"adapter-{cls.fixed_backbone} always adapts the {cls.fixed_backbone} backbone "
                             f"(got '{value}'); use method adapter-{value} for the {value} one")
        return value


class AdapterMedicalConfig(AdapterConfig):
    """``adapter-medical``: the medical backbone is adapted (``backbone`` may only be 'medical')."""

    fixed_backbone: ClassVar[str] = "medical"
    backbone: Literal["general", "medical"] = Field("medical", description="fixed by the method name")


class AdapterModel(SingleStreamModel):
    """A private copy of the backbone with a Pfeiffer adapter in every block, and a linear head."""

    def __init__(self, cfg: AdapterConfig, backbone: Backbone, num_classes: int):
        backbone = private_copy(backbone)
        adapters = inject_pfeiffer_adapters(backbone, cfg.bottleneck, cfg.activation)
        super().__init__(backbone, num_classes)
        self.adapter_modules = adapters  # plain list: the modules are registered inside the backbone

    def adapters(self) -> list[BottleneckAdapter]:
        return list(self.adapter_modules)


_ADAPTER_SOURCE = "Adapter (Pfeiffer et al. 2020), after the FFN of every block"


@register_method("adapter-general", family="adapter", source=_ADAPTER_SOURCE, config=AdapterConfig, uses="one")
def build_adapter_general(cfg: AdapterConfig, backbone, _other, num_classes):
    return AdapterModel(cfg, backbone, num_classes)


@register_method("adapter-medical", family="adapter", source=_ADAPTER_SOURCE, config=AdapterMedicalConfig,
                 uses="one")
def build_adapter_medical(cfg: AdapterMedicalConfig, backbone, _other, num_classes):
    return AdapterModel(cfg, backbone, num_classes)


# --- LoRA ---------------------------------------------------------------------------------------------------

class LoRAConfig(SingleBackboneConfig):
    r: int = Field(8, ge=1, description="rank of the update B A")
    alpha: float = Field(8.0, gt=0, description="the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the LoRA branch's input")
    target_modules: tuple[str, ...] = Field(("qkv",), min_length=1,
                                            description="names (suffixes) of the nn.Linear layers to adapt")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_names(cls, value):
        if isinstance(value, str):  # --set target_modules=qkv,proj
            value = [name.strip() for name in value.split(",") if name.strip()]
        return value


def lora_targets(backbone: Backbone, names: tuple[str, ...]) -> list[str]:
    """Full paths of the ``nn.Linear`` layers inside the blocks whose path ends with one of ``names`` (a bare
    suffix like ``proj`` would otherwise also catch the patch embedding's convolution)."""
    found = [path for path, module in backbone.model.named_modules()
             if path.startswith("blocks.") and isinstance(module, nn.Linear)
             and any(path == n or path.endswith("." + n) for n in names)]
    if not found:
        raise MedvtabError(f"method 'lora' option 'target_modules': no linear layer in the blocks of "
                           f"'{backbone.spec}' is named {', '.join(names)} (e.g. qkv, proj, fc1, fc2)")
    return found


class LoRAModel(SingleStreamModel):
    """A private copy of the backbone with peft LoRA layers in its ``target_modules``, and a linear head."""

    def __init__(self, cfg: LoRAConfig, backbone: Backbone, num_classes: int):
        # Imported here: peft pulls in transformers (seconds), which no other method needs at CLI start-up.
        from peft import LoraConfig as PeftLoraConfig, inject_adapter_in_model

        backbone = private_copy(backbone)
        targets = lora_targets(backbone, cfg.target_modules)
        peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                  target_modules=targets, bias="none")
        inject_adapter_in_model(peft_cfg, backbone.model)
        super().__init__(backbone, num_classes)

    def lora_layers(self) -> list[nn.Module]:
        from peft.tuners.tuners_utils import BaseTunerLayer  # here: see __init__

        return [m for m in self.backbone.model.modules() if isinstance(m, BaseTunerLayer)]

    @property
    def merged(self) -> bool:
        return all(layer.merged for layer in self.lora_layers())

    def merge(self) -> None:
        """Fold every LoRA update into its frozen weight (peft's merge): same logits, no extra cost. Merge for
        inference only: training a merged model would apply the update twice."""
        for layer in self.lora_layers():
            if not layer.merged:
                layer.merge()

    def unmerge(self) -> None:
        """Take the LoRA updates back out of the frozen weights."""
        for layer in self.lora_layers():
            while layer.merged:
                layer.unmerge()


@register_method("lora", family="reparameterisation", source="LoRA (Hu et al. 2022) via peft", config=LoRAConfig,
                 uses="one")
def build_lora(cfg: LoRAConfig, backbone, _other, num_classes):
    return LoRAModel(cfg, backbone, num_classes)
