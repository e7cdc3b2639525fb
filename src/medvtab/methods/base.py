"""What every tuning method shares: a validated config, a registry entry, and a model interface.

A method is a config class (pydantic, unknown fields are errors) plus a ``build`` function that wraps the
frozen backbones into an :class:`AdaptedModel`. Adding a method = one module + one ``@register_method``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from medvtab.backbones import Backbone
from medvtab.errors import MedvtabError


class MethodConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AdaptedModel(nn.Module):
    """Frozen backbone(s) plus trainable parts; ``forward(uint8 images) -> logits``.

    A model whose trainable part sees only fixed backbone features sets ``caches_features`` and provides
    ``features(images)`` and ``logits_from_features(features)``: the engine then computes features once.
    """

    caches_features = False
    default_lr: float | None = None  # its method's learning rate (set by build_model): TrainConfig(lr=None) uses it

    def auxiliary_loss(self) -> torch.Tensor | None:
        """Extra training loss of the last forward (e.g. MoE load balancing), or None."""
        return None

    def routing_stats(self) -> dict:
        """Per-layer statistics gathered during evaluation (empty for methods without routing)."""
        return {}

    def reset_routing_stats(self) -> None:
        """Start a fresh statistics window."""

    def set_record_stats(self, on: bool) -> None:
        """Turn statistics recording on for evaluation (off for training and timing)."""

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {n: t.detach().contiguous() for n, t in self.state_dict().items() if n in names}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        expected = set(self.trainable_state_dict())
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise MedvtabError(f"{source}: adapter weights do not match the method "
                               f"(missing {missing[:4]}, unexpected {unexpected[:4]})")
        self.load_state_dict(state, strict=False)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    family: str
    source: str
    config_class: type[MethodConfig]
    build: Callable[..., AdaptedModel]
    uses: str  # "both" backbones or "one"
    default_lr: float


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, *, family: str, source: str, config: type[MethodConfig], uses: str,
                    default_lr: float = 1e-4):
    """Register ``build(config, backbone, other_backbone_or_None, num_classes) -> AdaptedModel``.

    ``uses="both"`` gets (general, medical); ``uses="one"`` gets the backbone its config's ``backbone``
    field names, and None."""
    if uses not in ("one", "both"):
        raise ValueError(f"uses must be 'one' or 'both', got {uses!r}")

    def wrap(build):
        _METHODS[name] = MethodSpec(name, family, source, config, build, uses, default_lr)
        return build
    return wrap


def method_names() -> list[str]:
    return list(_METHODS)


def get_method(name: str) -> MethodSpec:
    if name not in _METHODS:
        raise MedvtabError(f"unknown method '{name}'; expected one of: {', '.join(_METHODS)}")
    return _METHODS[name]


def make_config(name: str, overrides: dict) -> MethodConfig:
    spec = get_method(name)
    try:
        return spec.config_class(**overrides)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or name
        raise MedvtabError(f"method '{name}' option '{field}': {first['msg']}") from None


def build_model(name: str, config: MethodConfig, first: Backbone, second: Backbone | None,
                num_classes: int) -> AdaptedModel:
    spec = get_method(name)
    model = spec.build(config, first, second, num_classes)
    model.default_lr = spec.default_lr
    return model


def count_parameters(module: nn.Module, trainable: bool) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad == trainable)


def parameter_counts(model: AdaptedModel, backbones: list[Backbone]) -> dict:
    """Trainable and frozen parameters, and ``params_ratio`` as the papers' "Total Params": (one backbone +
    everything the method adds: adapters, prompts, LoRA, heads) / one backbone. ``backbones`` are the ones the
    model was built from (methods that modify a backbone work on a copy, so these keep their original size);
    the first one is the reference."""
    total = sum(p.numel() for p in model.parameters())
    trainable = count_parameters(model, trainable=True)
    added = total - sum(b.info.params for b in backbones)
    one = backbones[0].info.params
    return {"trainable_params": trainable, "frozen_params": total - trainable,
            "params_ratio": round((one + added) / one, 4)}


def resolve_backbone_specs(method: str, config: MethodConfig, general: str, medical: str | None) -> list[str]:
    """The backbone specs a method runs on: both for dual-stream methods, else the one its config picks."""
    if get_method(method).uses == "both":
        if not medical:
            raise MedvtabError(f"method '{method}' needs a medical backbone (--medical)")
        return [general, medical]
    chosen = general if config.backbone == "general" else medical
    if not chosen:
        raise MedvtabError(f"method '{method}' adapts the {config.backbone} backbone, but none was given")
    return [chosen]
