"""DynaMer's options (a run id hashes their ``model_dump``: names, order, types and defaults stay as they are)."""
from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, model_validator

from medvtab.errors import MedvtabError
from medvtab.methods.base import MethodConfig

SkipMode = Literal["adapter", "later-blocks", "block"]  # by how much work skipped tokens bypass
SKIP_MODES: tuple[str, ...] = get_args(SkipMode)
# Default hidden widths of experts and routers: width / 12 (AdaptFormer's 64 on ViT-B's 768), so the adapter's
# cost keeps the same small share of a block's at every backbone size: 4 experts of width / 12 on the pair
# cost about 5 % of the two blocks they sit between (ViT-B: bottleneck 64; the tiny pair: 8).
WIDTH_DIVISOR = 12
MIN_HIDDEN = 4


class DynaMerConfig(MethodConfig):
    num_experts: int = Field(4, ge=1)
    top_k: int = Field(2, ge=1)
    bottleneck: int | None = Field(None, ge=1, description="hidden width of each expert (None: the wider "
                                                            "backbone's width / 12)")
    router_hidden: int | None = Field(None, ge=1, description="hidden width of the router MLPs (None: the wider "
                                                               "backbone's width / 12)")
    gates: Literal["both", "general", "medical", "none"] = "both"
    gate_dim: Literal["1", "width/4", "width/2", "width"] = Field(
        "1", description="gate values per token: 1 (the paper's lightweight gate) up to one per channel")
    layers: str = Field("all", description="'all', 'last:K' or a comma list of block indices")
    keep_ratio: float = Field(1.0, gt=0.0, le=1.0)
    skip_mode: SkipMode = "adapter"
    balance_weight: float = Field(0.01, ge=0.0)

    @model_validator(mode="after")
    def _top_k_fits(self):
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) must not exceed num_experts ({self.num_experts})")
        return self

    def widths(self, width: int) -> tuple[int, int]:
        """``(bottleneck, router_hidden)`` for backbones of ``width`` (the wider one's)."""
        default = max(MIN_HIDDEN, width // WIDTH_DIVISOR)
        return self.bottleneck or default, self.router_hidden or default


def parse_layers(text: str, depth: int) -> list[int]:
    """'all' | 'last:K' | '0,5,11' -> sorted block indices."""
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
        raise MedvtabError(f"option 'layers': expected 'all', 'last:K' (1 <= K <= {depth}) or a comma list "
                           f"of block indices, got '{text}'") from None
    if not layers or layers[0] < 0 or layers[-1] >= depth:
        raise MedvtabError(f"option 'layers': block indices must lie in 0..{depth - 1}, got '{text}'")
    return layers
