"""Dual-backbone adapter baselines of the Med-VTAB / DynaMer tables: MoF-, MoE- and GMoE-Adapter.

All three need an aligned pair (same patch grid; MoE and GMoE also the same depth, as they run in lockstep).
Where tokens of the two streams are combined position by position, the merged slice follows DynaMer: it
starts at the CLS when both streams have one (and no other prefix tokens), else at each stream's first patch
token, and prefix tokens outside it stay in their own stream untouched.

**MoF-Adapter** (Tong et al. 2024, "Eyes Wide Shut?", Interleaved Mixture-of-Features): each backbone is adapted
on its own with a Pfeiffer adapter in every block (:mod:`medvtab.methods.adapters`, on private copies); nothing
mixes inside the backbones. Tong et al. interleave the two encoders' visual tokens in spatial order before their
LLM; here the final patch tokens are interleaved the same way, ``(g_1, m_1, g_2, m_2, ..., g_N, m_N)``, and a
classification head reads that sequence. Choices where the paper does not apply (it has an LLM, not a head):

* Final tokens are normed as each backbone's summary is: a ViT's own final ``norm`` (frozen), SAM's
  parameter-free layer norm. Prefix tokens (a ViT's CLS) are not interleaved: only positions exist in both.
* With different widths, each stream is projected linearly to the larger one (the wider stream is not).
* The head must see the order, so it is: a learned position embedding over the 2N interleaved positions
  (truncated normal, std 0.02) added to the sequence, attention pooling with one learned query
  (``nn.MultiheadAttention``, ``pool_heads`` heads), LayerNorm, linear classifier. All of it lives in ``head``.

**MoE-Adapter** (Mo et al. 2024a, equation 1 of the DynaMer paper): after every block ``l``, two MLP adapters
(one per stream) read the concatenated token pair and their outputs *replace* the tokens that go to block
``l + 1``:

    x_gen,i <- Adapter_gen([x_gen,i ; x_med,i]),   x_med,i <- Adapter_med([x_gen,i ; x_med,i])

Choices where the paper is silent: each adapter is an MLP in residual form, ``Adapter_s(pair) = x_s +
W_up,s(GELU(W_down,s pair))`` (input width = sum of both widths, hidden ``bottleneck``, output the stream's
width; GELU, the ViT's own FFN activation), with ``W_up`` zero-initialised, so every layer starts as exactly the
identity (a plain MLP replacing the tokens would throw the pre-trained features away at step 0).

**GMoE-Adapter** (Mo et al. 2024, Med-VTAB's gated mixture of experts): after every block ``l`` there are two
experts, a general adapter ``A_g`` and a medical adapter ``A_m`` (bottleneck MLPs, GELU, zero-init ``W_up``), and
a gating network per stream. Read precisely from the summary ("experts: pre-trained backbones from two
different domains ... using general A_g(.) and medical A_m(.) adapters"; "gating: computes weights for each
expert based on the input features"), applied to both streams:

    alpha_s,i = softmax(G_s(x_s,i))                      (2 weights, one linear layer per stream)
    x_s,i <- x_s,i + P_s(alpha_s,i[g] A_g(x_gen,i) + alpha_s,i[m] A_m(x_med,i))     for s in {gen, med}

i.e. each expert reads its own domain's token, each stream weighs the two experts from its own token, and both
streams receive the mixture as a residual update (so each stream depends on the other). The experts output the
larger width; ``P_s`` is a linear map for a narrower stream, else the identity. Gates keep PyTorch's default
init (weights near 0: alpha near 0.5 / 0.5 at the start).

MoE and GMoE end like DynaMer: a linear head on the concatenated final summary tokens of both streams.
When only one stream has a CLS (DINOv2 + LVM-Med), that CLS is the stream's summary and never merges, so the
last layer's update of that stream's patch tokens cannot reach the head: those parameters (MoE's last
``Adapter_gen``, GMoE's last general gate) get no gradient there, as in DynaMer. They are kept, and counted, so
every layer has the same structure as in the papers.

Default widths reproduce the papers' "Total Params" on the ViT-B pair (DINOv2 ViT-B/14 at 196 px + LVM-Med,
2-class head; ratio = (one backbone + everything added) / one backbone, as ``parameter_counts``):
MoF ``bottleneck=480`` -> 1.238X (paper 1.24X), MoE ``bottleneck=528`` -> 1.341X (1.34X), GMoE
``bottleneck=816`` -> 1.352X (1.35X). DynaMer's defaults give the paper's 1.211X (its lite preset 1.097X), below
GMoE either way.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from medvtab.backbones import Backbone, check_alignment
from medvtab.backbones.base import BackboneInfo
from medvtab.errors import MedvtabError
from medvtab.methods.adapters import BottleneckAdapter, inject_pfeiffer_adapters
from medvtab.methods.base import AdaptedModel, MethodConfig, register_method
from medvtab.methods.dual_stream import STREAMS, DualStreamHook, DualStreamRunner, Picks, StepHints, merge_starts
from medvtab.methods.single_stream import private_copy


def _require_pair(method: str, general: Backbone, medical: Backbone | None, lockstep: bool):
    if medical is None:
        raise MedvtabError(f"method '{method}' needs both a general and a medical backbone")
    alignment = check_alignment(general.info, medical.info)
    if lockstep or general.grid != medical.grid:  # MoF runs the streams apart: only the grid must match
        alignment.require()
    return alignment


def _split(x: torch.Tensor, start: int) -> tuple[torch.Tensor | None, torch.Tensor]:
    return (x[:, :start] if start else None), x[:, start:]


def _join(prefix: torch.Tensor | None, merged: torch.Tensor) -> torch.Tensor:
    return merged if prefix is None else torch.cat([prefix, merged], dim=1)


# --- MoF-Adapter --------------------------------------------------------------------------------------------

class MoFConfig(MethodConfig):
    bottleneck: int = Field(480, ge=1, description="hidden width of each stream's Pfeiffer adapters")
    activation: Literal["relu", "gelu"] = Field("relu", description="Pfeiffer et al. use ReLU")
    pool_heads: int = Field(8, ge=1, description="heads of the head's attention pooling")


def final_patch_tokens(backbone: Backbone, tokens: torch.Tensor) -> torch.Tensor:
    """The last block's patch tokens, normed as the backbone's summary is (prefix tokens dropped)."""
    norm = getattr(backbone.model, "norm", None) if backbone.architecture == "vit" else None
    if norm is not None and not isinstance(norm, nn.Identity):
        tokens = norm(tokens)
    else:
        tokens = F.layer_norm(tokens, tokens.shape[-1:])
    return tokens[:, backbone.num_prefix_tokens:]


def interleave(general: torch.Tensor, medical: torch.Tensor) -> torch.Tensor:
    """``(B, N, D)`` twice -> ``(B, 2N, D)`` ordered ``g_1, m_1, g_2, m_2, ...``."""
    return torch.stack([general, medical], dim=2).flatten(1, 2)


class InterleavedHead(nn.Module):
    """Order-sensitive head over the interleaved sequence: + learned positions, attention pooling with one
    learned query, LayerNorm, linear."""

    def __init__(self, positions: int, width: int, heads: int, num_classes: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, positions, width))
        self.query = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.query, std=0.02)
        self.pool = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        x = sequence + self.pos_embed
        pooled, _ = self.pool(self.query.expand(x.shape[0], -1, -1), x, x, need_weights=False)
        return self.classifier(self.norm(pooled.squeeze(1)))


class MoFModel(AdaptedModel):
    def __init__(self, cfg: MoFConfig, general: Backbone, medical: Backbone | None, num_classes: int):
        super().__init__()
        _require_pair("mof-adapter", general, medical, lockstep=False)
        width = max(general.width, medical.width)
        if width % cfg.pool_heads:
            raise MedvtabError(f"method 'mof-adapter' option 'pool_heads': {cfg.pool_heads} does not divide "
                               f"the width {width}")
        self.general, self.medical = private_copy(general), private_copy(medical)
        self.stream_adapters = [inject_pfeiffer_adapters(b, cfg.bottleneck, cfg.activation)
                                for b in (self.general, self.medical)]  # plain lists: registered in the copies
        self.project = nn.ModuleList(nn.Linear(b.width, width) if b.width != width else nn.Identity()
                                     for b in (self.general, self.medical))
        self.head = InterleavedHead(2 * general.info.num_patches, width, cfg.pool_heads, num_classes)

    def adapters(self) -> list[list[BottleneckAdapter]]:
        """Per stream (general, medical), its adapters in block order."""
        return [list(a) for a in self.stream_adapters]

    def stream_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each adapted stream on its own -> its final normed patch tokens, projected to the common width."""
        out = []
        for backbone, project in zip((self.general, self.medical), self.project):
            tokens = backbone.run_blocks(backbone.embed_images(images))
            out.append(project(final_patch_tokens(backbone, tokens)))
        return out[0], out[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(interleave(*self.stream_tokens(images)))


@register_method("mof-adapter", family="dual-stream adapter",
                 source="MoF-Adapter: interleaved Mixture-of-Features (Tong et al. 2024)", config=MoFConfig,
                 uses="both")
def build_mof(cfg: MoFConfig, general, medical, num_classes):
    return MoFModel(cfg, general, medical, num_classes)


# --- MoE-Adapter (equation 1) ---------------------------------------------------------------------------

class MoEAdapterConfig(MethodConfig):
    bottleneck: int = Field(528, ge=1, description="hidden width of each stream's MLP on the token pair")


class MoEAdapterLayer(DualStreamHook):
    """The hook after one block: per stream an MLP on ``[x_gen,i ; x_med,i]`` whose output replaces x_s,i. Every
    token goes through every block (no picks) and the runner's hints are not needed."""

    def __init__(self, cfg: MoEAdapterConfig, general: BackboneInfo, medical: BackboneInfo, merges_cls: bool):
        super().__init__()
        self.starts = merge_starts(general, medical, merges_cls)
        pair = general.width + medical.width
        self.adapters = nn.ModuleList(BottleneckAdapter(pair, cfg.bottleneck, "gelu", out_width=info.width)
                                      for info in (general, medical))

    def forward(self, xg: torch.Tensor, xm: torch.Tensor, picks: Picks | None = None,
                hints: StepHints = StepHints()):
        (pg, mg), (pm, mm) = _split(xg, self.starts[0]), _split(xm, self.starts[1])
        pair = torch.cat([mg, mm], dim=-1)
        new_g = mg + self.adapters[0](pair)  # residual form of Adapter_gen([x_gen; x_med])
        new_m = mm + self.adapters[1](pair)
        return _join(pg, new_g), _join(pm, new_m), None


# --- GMoE-Adapter -----------------------------------------------------------------------------------------

class GMoEAdapterConfig(MethodConfig):
    bottleneck: int = Field(816, ge=1, description="hidden width of the general and the medical expert")


class GMoEAdapterLayer(DualStreamHook):
    """The hook after one block: experts A_g(x_gen), A_m(x_med); per stream a softmax gate over the two from
    its own token; the weighted sum is added to both streams. Like :class:`MoEAdapterLayer`, no picks, no hints."""

    def __init__(self, cfg: GMoEAdapterConfig, general: BackboneInfo, medical: BackboneInfo, merges_cls: bool):
        super().__init__()
        self.starts = merge_starts(general, medical, merges_cls)
        width = max(general.width, medical.width)
        self.experts = nn.ModuleList(BottleneckAdapter(info.width, cfg.bottleneck, "gelu", out_width=width)
                                     for info in (general, medical))
        self.gates = nn.ModuleList(nn.Linear(info.width, 2) for info in (general, medical))
        self.project = nn.ModuleList(nn.Linear(width, info.width) if info.width != width else nn.Identity()
                                     for info in (general, medical))
        self.record_stats = False
        self.register_buffer("stats", torch.zeros(2, 3), persistent=False)  # per stream: sum alpha_g, alpha_m, images

    def gate_weights(self, s: int, x: torch.Tensor) -> torch.Tensor:
        """``(..., 2)``: stream ``s``'s weights of the general and the medical expert for each token."""
        return self.gates[s](x).softmax(dim=-1)

    def forward(self, xg: torch.Tensor, xm: torch.Tensor, picks: Picks | None = None,
                hints: StepHints = StepHints()):
        (pg, mg), (pm, mm) = _split(xg, self.starts[0]), _split(xm, self.starts[1])
        expert_out = torch.stack([self.experts[0](mg), self.experts[1](mm)], dim=-2)  # (B, T, 2, width)
        new = []
        for s, x in enumerate((mg, mm)):
            alpha = self.gate_weights(s, x)
            mixed = (alpha.unsqueeze(-1) * expert_out).sum(dim=-2)
            new.append(x + self.project[s](mixed))
            if self.record_stats and not self.training:
                with torch.no_grad():
                    self.stats[s, :2] += alpha.mean(dim=1).sum(dim=0)
                    self.stats[s, 2] += x.shape[0]
        return _join(pg, new[0]), _join(pm, new[1]), None

    def summary(self) -> dict:
        out = {}
        for s, name in enumerate(STREAMS):
            images = self.stats[s, 2].item() or 1.0
            out[name] = {"expert_weights": [round(v / images, 4) for v in self.stats[s, :2].tolist()]}
        return out


# --- shared dual-stream model --------------------------------------------------------------------------------

class MixtureModel(AdaptedModel):
    """Both frozen backbones in lockstep with a hook after every block; linear head on both summaries."""

    def __init__(self, method: str, layer_cls, cfg, general: Backbone, medical: Backbone | None, num_classes: int):
        super().__init__()
        alignment = _require_pair(method, general, medical, lockstep=True)
        hooks = {i: layer_cls(cfg, general.info, medical.info, alignment.merges_cls) for i in range(general.depth)}
        self.runner = DualStreamRunner(general, medical, hooks)
        self.head = nn.Linear(general.width + medical.width, num_classes)

    def layers(self) -> list[nn.Module]:
        return [self.runner.hooks[str(i)] for i in range(self.runner.depth)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        xg, xm = self.runner(images)
        features = torch.cat([self.runner.general.summary(xg), self.runner.medical.summary(xm)], dim=-1)
        return self.head(features)


class GMoEModel(MixtureModel):
    def set_record_stats(self, on: bool) -> None:
        for layer in self.layers():
            layer.record_stats = on

    def reset_routing_stats(self) -> None:
        for layer in self.layers():
            layer.stats.zero_()

    def routing_stats(self) -> dict:
        return {str(i): layer.summary() for i, layer in enumerate(self.layers())}


@register_method("moe-adapter", family="dual-stream adapter", source="MoE-Adapter (Mo et al. 2024a), DynaMer eq. 1",
                 config=MoEAdapterConfig, uses="both")
def build_moe(cfg: MoEAdapterConfig, general, medical, num_classes):
    return MixtureModel("moe-adapter", MoEAdapterLayer, cfg, general, medical, num_classes)


@register_method("gmoe-adapter", family="dual-stream adapter",
                 source="GMoE-Adapter (Med-VTAB, Mo et al. 2024)", config=GMoEAdapterConfig, uses="both")
def build_gmoe(cfg: GMoEAdapterConfig, general, medical, num_classes):
    return GMoEModel("gmoe-adapter", GMoEAdapterLayer, cfg, general, medical, num_classes)
