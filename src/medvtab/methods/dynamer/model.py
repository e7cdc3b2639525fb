"""The DynaMer model: both frozen backbones in lockstep with a DynaMer layer after the chosen blocks (``layers``), its
gates in ``gated_layers``, a linear head on both streams' summaries (a backbone's CLS token, or the mean of its patch
tokens where it has none, as LVM-Med); registered as method ``dynamer``."""
from __future__ import annotations

import torch
from torch import nn

from medvtab.backbones import Backbone, check_alignment
from medvtab.errors import MedvtabError
from medvtab.methods.base import AdaptedModel, register_method
from medvtab.methods.dual_stream import DualStreamRunner
from medvtab.methods.dynamer.config import DynaMerConfig, parse_layers
from medvtab.methods.dynamer.experts import MOE_IMPLS
from medvtab.methods.dynamer.fast import FastDynaMerLayer


class DynaMerModel(AdaptedModel):
    def __init__(self, cfg: DynaMerConfig, general: Backbone, medical: Backbone, num_classes: int):
        super().__init__()
        if medical is None:
            raise MedvtabError("method 'dynamer' needs both a general and a medical backbone")
        self.cfg = cfg
        layers = parse_layers(cfg.layers, general.depth)
        gated = set(parse_layers(cfg.gated_layers, general.depth, "gated_layers"))
        alignment = check_alignment(general.info, medical.info)
        alignment.require()
        hooks = {i: FastDynaMerLayer(cfg, general.info, medical.info, alignment.merges_cls, gated=i in gated)
                 for i in layers}
        self.runner = DualStreamRunner(general, medical, hooks)
        self.head = nn.Linear(general.width + medical.width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        xg, xm = self.runner(images, summaries_only=True)
        features = torch.cat([self.runner.general.summary(xg), self.runner.medical.summary(xm)], dim=-1)
        return self.head(features)

    def set_fast(self, on: bool) -> None:
        """False: the paper's layers and the runner's plain protocol (the reference the fast path is tested
        against)."""
        self.runner.fast = on
        for _, layer in self._layers():
            layer.fast = on

    def set_moe_impl(self, impl: str) -> None:
        """How every layer's fast path computes its experts: "auto" (by size, see :class:`SharedExperts`), "dense"
        or "gathered"."""
        if impl not in MOE_IMPLS:
            raise MedvtabError(f"MoE implementation must be one of {', '.join(MOE_IMPLS)}, got '{impl}'")
        for _, layer in self._layers():
            layer.experts.impl = impl

    def _layers(self) -> list[tuple[int, FastDynaMerLayer]]:
        return [(int(i), layer) for i, layer in self.runner.hooks.items()]

    def auxiliary_loss(self):
        if self.cfg.balance_weight == 0:
            return None
        losses = [layer.aux_loss for _, layer in self._layers() if layer.aux_loss is not None]
        return self.cfg.balance_weight * torch.stack(losses).mean() if losses else None

    def set_record_stats(self, on: bool) -> None:
        for _, layer in self._layers():
            layer.record_stats = on

    def reset_routing_stats(self):
        for _, layer in self._layers():
            layer.stats.zero_()

    def routing_stats(self):
        return {str(i): layer.summary() for i, layer in self._layers()}


@register_method("dynamer", family="dual-stream MoE adapter", source="DynaMer (ICLR 2025 submission)",
                 config=DynaMerConfig, uses="both")
def build_dynamer(cfg: DynaMerConfig, general, medical, num_classes):
    return DynaMerModel(cfg, general, medical, num_classes)
