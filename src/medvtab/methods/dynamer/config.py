"""DynaMer's options (a run id hashes their ``model_dump``). The defaults are the paper's configuration; ``preset:
lite`` fills the lightweight one (see :data:`PRESETS`) wherever an option is not given."""
from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, model_validator

from medvtab.errors import MedvtabError
from medvtab.methods.base import MethodConfig

SkipMode = Literal["adapter", "later-blocks", "block"]  # by how much work skipped tokens bypass
SKIP_MODES: tuple[str, ...] = get_args(SkipMode)
# Hidden widths of experts and routers default to width / width_divisor of the wider backbone. The paper's 24 (32 on
# ViT-B's 768) puts the DINOv2-B + LVM-Med pair at the paper's 1.21X with width-wide gates; the lite preset's 12
# (AdaptFormer's 64 on ViT-B) with one-value gates costs about 5 % of the two blocks the adapter sits between.
MIN_HIDDEN = 8
# What ``preset: lite`` sets where the option is not given: one gate value per token, a router per stream, a
# Switch-style load-balancing loss, width / 12 experts (1.097X on the ViT-B pair, 1.06x the backbones' FLOPs).
PRESETS: dict[str, dict] = {
    "paper": {},
    "lite": {"router": "per-stream", "gate_dim": "1", "balance_weight": 0.01, "width_divisor": 12},
}


class DynaMerConfig(MethodConfig):
    preset: Literal["paper", "lite"] = Field("paper", description="'lite': the lightweight configuration "
                                                                  "(PRESETS) for the options not given")
    num_experts: int = Field(4, ge=1)
    top_k: int = Field(2, ge=1)
    width_divisor: int = Field(24, ge=1, description="experts and routers are the wider backbone's width / this "
                                                     "wide unless bottleneck / router_hidden say otherwise")
    bottleneck: int | None = Field(None, ge=1, description="hidden width of each expert")
    router_hidden: int | None = Field(None, ge=1, description="hidden width of the router MLPs")
    router: Literal["shared", "per-stream"] = Field(
        "shared", description="one adaptation router for both streams (the paper; needs equal widths) or one each")
    gates: Literal["both", "general", "medical", "none"] = "both"
    gate_dim: Literal["1", "width/4", "width/2", "width"] = Field(
        "width", description="gate values per token: one per channel (the paper's main results) down to 1")
    gated_layers: str = Field("all", description="the layers whose DynaMer layer has its gates (Table 6): 'all', "
                                                 "'last:K' or a comma list of block indices")
    layers: str = Field("all", description="the blocks followed by a DynaMer layer (not in the paper): 'all', "
                                           "'last:K' or a comma list of block indices")
    keep_ratio: float = Field(1.0, gt=0.0, le=1.0)
    skip_mode: SkipMode = "adapter"
    balance_weight: float = Field(0.0, ge=0.0, description="weight of a Switch-style load-balancing loss (not "
                                                           "in the paper)")

    @model_validator(mode="before")
    @classmethod
    def _fill_preset(cls, data):
        if isinstance(data, dict) and data.get("preset", "paper") in PRESETS:
            data = {**PRESETS[data.get("preset", "paper")], **data}
        return data

    @model_validator(mode="after")
    def _top_k_fits(self):
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) must not exceed num_experts ({self.num_experts})")
        return self

    def widths(self, width: int) -> tuple[int, int]:
        """``(bottleneck, router_hidden)`` for backbones of ``width`` (the wider one's)."""
        default = max(MIN_HIDDEN, width // self.width_divisor)
        return self.bottleneck or default, self.router_hidden or default


def parse_layers(text: str, depth: int, option: str = "layers") -> list[int]:
    """'all' | 'last:K' | '0,5,11' -> sorted block indices (``option``: the option's name, for errors)."""
    text = text.strip()
    try:
        if text == "all":
            layers = list(range(depth))
        elif text.startswith("last:"):
            k = int(text.removeprefix("last:"))
            if not 1 <= k <= depth:
                raise ValueError
            layers = list(range(depth - k, depth))
        else:
            layers = sorted({int(t) for t in text.split(",")})
    except ValueError:
        raise MedvtabError(f"option '{option}': expected 'all', 'last:K' (1 <= K <= {depth}) or a comma list "
                           f"of block indices, got '{text}'") from None
    if not layers or layers[0] < 0 or layers[-1] >= depth:
        raise MedvtabError(f"option '{option}': block indices must lie in 0..{depth - 1}, got '{text}'")
    return layers
