"""Prompt-tuning baselines on one frozen ViT: VPT-Shallow, VPT-Deep, GaPT and LSPT.

All four insert ``M`` learnable prompt tokens right after the backbone's prefix tokens (CLS, and registers
where a backbone has them), so every block runs on ``[prefix, prompts, patches]``:

* **VPT-Shallow** (Jia et al., ECCV 2022, "Visual Prompt Tuning"): prompts ``P`` (M, D) enter block 0 only,
  then evolve through the blocks like any other token.
* **VPT-Deep** (same paper): block ``l`` gets its own prompts ``P_l``; the prompt tokens a block outputs are
  discarded and *replaced* by the next block's ``P_{l+1}`` (one (depth, M, D) parameter).
* **GaPT** (Yoo et al., ICML 2023, "Improving Visual Prompt Tuning for Self-supervised Vision Transformers"):
  shallow prompts plus, per block ``l``, a learnable gate ``g_l = sigmoid(a_l)`` mixing the prompts a block
  receives and returns, ``P_{l+1} = g_l * Block_l(P_l) + (1 - g_l) * P_l``, so each block decides how much it
  steers the prompts; and a learnable attention temperature ``T_l`` per block (adaptive attention shaping):
  every attention logit of block ``l`` is divided by ``T_l`` (``softmax(q k^T / (sqrt(d) T_l))``).
* **LSPT** (Mo et al. 2024, "LSPT: Long-term Spatial Prompt Tuning for Visual Representation Learning",
  arXiv 2402.17406): shallow prompts plus, between blocks, (i) *class-aware spatial prompt coding*: the mean of
  the block's output patch tokens is added to its output prompts, so the prompts keep accumulating global
  image features; (ii) *long-term prompt coding*: one LSTM cell shared by all blocks carries a gated memory of
  the prompts across the depth of the network, ``(h_{l+1}, c_{l+1}) = LSTM(Block_l(P_l) + mean(X_{l+1}),
  (h_l, c_l))``, ``P_{l+1} = h_{l+1}``.

The head always reads the backbone's own summary (normed CLS, or mean of patch tokens) *after the prompt
tokens are dropped*, so mean-pooling backbones are not polluted by prompts and every backbone's pooling
stays as it was pre-trained. Prompts have no grid position, so SAM's windowed encoders cannot host them
(:func:`require_sequence_vit`).

Choices, and where they come from:

* ``num_prompts = 10`` for all four. VPT searches {1, 5, 10, 50, 100, 200} per task (its code's default is
  5; GaPT's config also 5, its README example 100). 10 is inside that grid, small next to the patch count of
  every supported backbone (49 for the tiny ones, 196 for ViT-B at 224 px) and the same for all four methods,
  so they compare at an equal prompt budget; sweep it like any other field.
* ``prompt_dropout = 0.1``: VPT's setting, and the one GaPT's released ``run.sh`` passes (its config default
  is 0.0). Applied to every prompt taken from a parameter; the identity in evaluation.
* Initialisation (all prompt parameters): VPT's "xavier uniform on the patch-embedding fan-in",
  ``U(-v, v)`` with ``v = sqrt(6 / (3 * patch_size**2 + D))``.
* GaPT gates: ``depth - 1`` of them (GaPT's ``GATE_NUM = 11`` for 12 blocks): the prompts the last block
  outputs are dropped before the head, so a gate there would change nothing. Logits start at ``-5`` (GaPT's
  ``GATE_INIT``, a negated logit, is 5 in the authors' README run command; its config default is 10):
  ``g ~ 0.007``, so at the start blocks barely touch the prompts and training opens the gates of the blocks
  that should steer them. Temperatures: one per block, start at 1 and are kept in ``[0.01, 10]`` (GaPT's
  ``TEMP_MIN``/``TEMP_MAX``; like GaPT they are clamped in place before every training forward). With
  ``T = 1`` a block's output is exactly timm's: the attention is run here on timm's own modules with ``q``
  divided by ``T`` (exact for ``T = 1``), through the same fused or manual path timm would take.
* LSPT. Only the paper's abstract, third-party summaries and its ICLR 2024 reviews could be read here, not
  its equations. They fix two things: the spatial code adds "the average embedding of patch tokens to the
  output prompts" (parameter-free, so done exactly that way), and long-term coding is one LSTM shared by
  all blocks. The rest is chosen here: the LSTM is ``nn.LSTMCell(D, D)``, applied to each prompt token
  separately, with its hidden state *being* the prompts: ``h_0`` = the learnable input prompts,
  ``c_0 = 0``. At step ``l`` the LSTM thus sees the prompts block ``l`` received (``h_l``, as GaPT's gate does)
  and the ones it returned (the input), and its forget/input gates decide how much of the memory of all
  earlier blocks (``c``) and of this block's update reaches block ``l+1``: GaPT's one-scalar gate between
  two blocks generalised to a gated memory across all of them. One D-wide LSTM adds ``8D^2 + 8D``
  parameters (4.7M on ViT-B, ~5% of the backbone, in line with the 1.05x "Total Params" the DynaMer
  paper's tables give LSPT). It runs between blocks only (``depth - 1`` steps): what would follow the last
  block never reaches the head. ``spatial`` and ``long_term`` switch the two parts off for ablations (both
  off = VPT-Shallow). GaPT's temperatures are not part of LSPT.
* Default learning rate ``1e-3`` (other methods: ``1e-4``). VPT and GaPT tune prompts with SGD at base
  rates of 0.1 and above (GaPT's example run: 0.1; VPT's grid goes up to 50): prompts are inputs whose scale
  the following LayerNorm removes, and they need far larger steps than weights inside the network. Under
  AdamW, whose step is about ``lr`` whatever the gradient's scale, 1e-3 moves a prompt of magnitude ~0.06
  (VPT's init on ViT-B) by its own size within a few dozen steps.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from timm.models.vision_transformer import Attention, Block
from torch import nn

from medvtab.backbones import Backbone
from medvtab.errors import MedvtabError
from medvtab.methods.base import register_method
from medvtab.methods.single_stream import SingleBackboneConfig, SingleStreamModel, require_sequence_vit

PROMPT_LR = 1e-3


# --- configs -----------------------------------------------------------------------------------------------

class PromptConfig(SingleBackboneConfig):
    num_prompts: int = Field(10, ge=1, description="prompt tokens inserted after the prefix (CLS) tokens")
    prompt_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout on prompts taken from a parameter")


class VPTConfig(PromptConfig):
    pass


class GaPTConfig(PromptConfig):
    gate_logit_init: float = Field(-5.0, description="initial gate logit a_l (g = sigmoid(a_l)); GaPT: -GATE_INIT")
    learn_temperature: bool = Field(True, description="adaptive attention shaping: a learnable temperature per block")
    temperature_min: float = Field(0.01, gt=0.0)
    temperature_max: float = Field(10.0, gt=0.0)

    @model_validator(mode="after")
    def _temperature_range(self):
        if self.temperature_min > self.temperature_max:
            raise ValueError(f"temperature_min ({self.temperature_min}) exceeds temperature_max "
                             f"({self.temperature_max})")
        return self


class LSPTConfig(PromptConfig):
    spatial: bool = Field(True, description="class-aware spatial prompt coding: add the mean patch token")
    long_term: bool = Field(True, description="long-term prompt coding: a shared LSTM cell across blocks")


# --- shared machinery --------------------------------------------------------------------------------------

def vpt_uniform_(param: torch.Tensor, patch_size: int, width: int) -> torch.Tensor:
    """VPT's prompt initialisation: U(-v, v), v = sqrt(6 / (3 * patch_size**2 + D))."""
    bound = math.sqrt(6.0 / (3 * patch_size * patch_size + width))
    with torch.no_grad():
        return param.uniform_(-bound, bound)


class PromptedModel(SingleStreamModel):
    """A single frozen backbone whose token sequence carries ``num_prompts`` prompt tokens after its prefix."""

    def __init__(self, backbone: Backbone, num_classes: int, cfg: PromptConfig):
        super().__init__(backbone, num_classes)
        self.num_prompts = cfg.num_prompts
        self.start = backbone.num_prefix_tokens  # prompts occupy tokens[:, start:start + num_prompts]
        self.prompt_dropout = nn.Dropout(cfg.prompt_dropout)

    def _new_prompts(self, *leading: int) -> nn.Parameter:
        b = self.backbone
        return nn.Parameter(vpt_uniform_(torch.empty(*leading, self.num_prompts, b.width), b.patch_size, b.width))

    # -- token bookkeeping ----------------------------------------------------------------------------------
    def insert(self, tokens: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """[prefix, patches] -> [prefix, prompts, patches]; ``prompts`` is (M, D) or (B, M, D)."""
        prompts = prompts.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        return torch.cat([tokens[:, :self.start], prompts, tokens[:, self.start:]], dim=1)

    def replace(self, tokens: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """The same sequence with the prompt tokens swapped for ``prompts`` (out of place, autograd-safe)."""
        prompts = prompts.to(tokens.dtype).expand(tokens.shape[0], -1, -1)  # LSTM under autocast: bf16
        end = self.start + self.num_prompts
        return torch.cat([tokens[:, :self.start], prompts, tokens[:, end:]], dim=1)

    def prompt_slice(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.start:self.start + self.num_prompts]

    def patch_slice(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.start + self.num_prompts:]

    def drop_prompts(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([tokens[:, :self.start], self.patch_slice(tokens)], dim=1)

    # -- forward --------------------------------------------------------------------------------------------
    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embedded ``[prefix, patches]`` -> the last block's ``[prefix, prompts, patches]``."""
        raise NotImplementedError

    def features(self, images: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        tokens = self.encode(b.embed_images(images))
        return b.summary(self.drop_prompts(tokens))


# --- VPT ---------------------------------------------------------------------------------------------------

class VPTShallow(PromptedModel):
    """Prompts at the input only; afterwards they are ordinary tokens of the sequence."""

    def __init__(self, backbone: Backbone, num_classes: int, cfg: VPTConfig):
        super().__init__(backbone, num_classes, cfg)
        self.prompts = self._new_prompts()  # (M, D)

    def encode(self, tokens):
        return self.backbone.run_blocks(self.insert(tokens, self.prompt_dropout(self.prompts)))


class VPTDeep(PromptedModel):
    """Block ``l`` always receives its own prompts ``prompts[l]``: the previous block's prompt outputs are
    discarded (VPT's deep variant; its code's shallow + deep parameters are one (depth, M, D) tensor here)."""

    def __init__(self, backbone: Backbone, num_classes: int, cfg: VPTConfig):
        super().__init__(backbone, num_classes, cfg)
        self.prompts = self._new_prompts(backbone.depth)  # (depth, M, D)

    def encode(self, tokens):
        b = self.backbone
        for i in range(b.depth):
            prompts = self.prompt_dropout(self.prompts[i])
            tokens = self.insert(tokens, prompts) if i == 0 else self.replace(tokens, prompts)
            tokens = b.block(i, tokens)
        return tokens


# --- GaPT --------------------------------------------------------------------------------------------------

def _check_timm_blocks(backbone: Backbone, method: str) -> None:
    for i, blk in enumerate(backbone.model.blocks):
        attn = getattr(blk, "attn", None)
        if (getattr(type(blk), "forward", None) is not Block.forward
                or getattr(type(attn), "forward", None) is not Attention.forward):
            raise MedvtabError(f"method '{method}' reshapes attention inside timm's standard ViT block; "
                               f"block {i} of '{backbone.spec}' is a {type(blk).__name__} with "
                               f"{type(attn).__name__} attention")


def tempered_attention(attn: Attention, x: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """timm ``Attention.forward`` with every attention logit divided by ``temperature`` (a scalar tensor).

    ``q`` is divided by the temperature before the product, which for ``temperature == 1`` leaves it
    bit-identical, and the same fused (``scaled_dot_product_attention``) or manual path as timm is taken,
    so ``T = 1`` reproduces timm's output exactly."""
    b, n, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    head_dim = attn.head_dim
    attn_dim = getattr(attn, "attn_dim", attn.num_heads * head_dim)
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    q = q / temperature
    if attn.fused_attn:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:
        q = q * attn.scale
        weights = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        out = attn.attn_drop(weights) @ v
    out = out.transpose(1, 2).reshape(b, n, attn_dim)
    out = getattr(attn, "norm", nn.Identity())(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))


def tempered_block(blk: Block, x: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """timm ``Block.forward`` with :func:`tempered_attention`."""
    x = x + blk.drop_path1(blk.ls1(tempered_attention(blk.attn, blk.norm1(x), temperature)))
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


class GaPT(PromptedModel):
    """Shallow prompts, a gate per block between its input and output prompts, a temperature per block."""

    def __init__(self, backbone: Backbone, num_classes: int, cfg: GaPTConfig):
        super().__init__(backbone, num_classes, cfg)
        self.cfg = cfg
        self.prompts = self._new_prompts()  # (M, D)
        self.gate_logits = nn.Parameter(torch.full((backbone.depth - 1,), float(cfg.gate_logit_init)))
        self.temperature = nn.Parameter(torch.ones(backbone.depth)) if cfg.learn_temperature else None

    def gates(self) -> torch.Tensor:
        return torch.sigmoid(self.gate_logits)

    def temperatures(self) -> torch.Tensor | None:
        if self.temperature is None:
            return None
        lo, hi = self.cfg.temperature_min, self.cfg.temperature_max
        if self.training:  # GaPT clamps the parameter itself before each training forward
            with torch.no_grad():
                self.temperature.clamp_(lo, hi)
        return self.temperature.clamp(lo, hi)

    def run_block(self, i: int, tokens: torch.Tensor, temperatures: torch.Tensor | None) -> torch.Tensor:
        if temperatures is None:
            return self.backbone.block(i, tokens)
        return tempered_block(self.backbone.model.blocks[i], tokens, temperatures[i])

    def encode(self, tokens):
        depth = self.backbone.depth
        temperatures = self.temperatures()
        gates = self.gates()
        tokens = self.insert(tokens, self.prompt_dropout(self.prompts))
        for i in range(depth):
            prompts_in = self.prompt_slice(tokens)
            tokens = self.run_block(i, tokens, temperatures)
            if i < depth - 1:
                mixed = gates[i] * self.prompt_slice(tokens) + (1 - gates[i]) * prompts_in
                tokens = self.replace(tokens, mixed)
        return tokens


# --- LSPT --------------------------------------------------------------------------------------------------

class LSPT(PromptedModel):
    """Shallow prompts; between blocks, the mean patch token is added to the output prompts (spatial coding)
    and a shared LSTM cell, whose hidden state is the prompts, carries a gated memory across blocks."""

    def __init__(self, backbone: Backbone, num_classes: int, cfg: LSPTConfig):
        super().__init__(backbone, num_classes, cfg)
        self.spatial = cfg.spatial
        self.prompts = self._new_prompts()  # (M, D)
        self.lstm = nn.LSTMCell(backbone.width, backbone.width) if cfg.long_term else None

    def spatial_code(self, tokens: torch.Tensor) -> torch.Tensor:
        """The spatial prompt of each image, (B, 1, D): the mean of its patch tokens."""
        return self.patch_slice(tokens).mean(dim=1, keepdim=True)

    def encode(self, tokens):
        depth = self.backbone.depth
        b, m, d = tokens.shape[0], self.num_prompts, self.backbone.width
        prompts = self.prompt_dropout(self.prompts).expand(b, -1, -1)
        tokens = self.insert(tokens, prompts)
        state = (prompts.reshape(b * m, d), prompts.new_zeros(b * m, d)) if self.lstm is not None else None
        for i in range(depth):
            tokens = self.backbone.block(i, tokens)
            if i == depth - 1:
                break
            update = self.prompt_slice(tokens)
            if self.spatial:
                update = update + self.spatial_code(tokens)
            if self.lstm is not None:
                state = self.lstm(update.reshape(b * m, d), state)
                update = state[0].view(b, m, d)
            tokens = self.replace(tokens, update)
        return tokens


# --- registry ----------------------------------------------------------------------------------------------

@register_method("vpt-shallow", family="prompt tuning", source="VPT-Shallow (Jia et al., ECCV 2022)",
                 config=VPTConfig, uses="one", default_lr=PROMPT_LR)
def build_vpt_shallow(cfg: VPTConfig, backbone, _other, num_classes):
    require_sequence_vit(backbone, "vpt-shallow")
    return VPTShallow(backbone, num_classes, cfg)


@register_method("vpt-deep", family="prompt tuning", source="VPT-Deep (Jia et al., ECCV 2022)",
                 config=VPTConfig, uses="one", default_lr=PROMPT_LR)
def build_vpt_deep(cfg: VPTConfig, backbone, _other, num_classes):
    require_sequence_vit(backbone, "vpt-deep")
    return VPTDeep(backbone, num_classes, cfg)


@register_method("gapt", family="prompt tuning", source="GaPT, gated prompt tuning (Yoo et al., ICML 2023)",
                 config=GaPTConfig, uses="one", default_lr=PROMPT_LR)
def build_gapt(cfg: GaPTConfig, backbone, _other, num_classes):
    require_sequence_vit(backbone, "gapt")
    if cfg.learn_temperature:
        _check_timm_blocks(backbone, "gapt")
    return GaPT(backbone, num_classes, cfg)


@register_method("lspt", family="prompt tuning", source="LSPT, long-term spatial prompt tuning (Mo et al., 2024)",
                 config=LSPTConfig, uses="one", default_lr=PROMPT_LR)
def build_lspt(cfg: LSPTConfig, backbone, _other, num_classes):
    require_sequence_vit(backbone, "lspt")
    return LSPT(backbone, num_classes, cfg)
