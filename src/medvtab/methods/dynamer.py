"""DynaMer (ICLR 2025 submission, "Stand on two shoulders"): dynamically merging tokens of a general and a
medical ViT with a gated mixture-of-experts adapter after every layer and a layer-wise skipping router.

Per layer ``l`` and merged token pair ``(x_gen,i, x_med,i)`` (patch tokens; CLS too when both have one):

* Experts ``E_j`` (shared by both streams) are bottleneck MLPs on the concatenated pair. Each expert is an
  adapter layer with its residual on the stream's own token: ``AdapE_j(x_s) = x_s + up_j(gelu(down_j([x_gen;
  x_med])))``, so ``sum_j p_j AdapE_j = x_s + sum_j p_j delta_j`` (the top-k weights sum to one).
* Each stream has its own expert router ``R_A`` (an MLP on that stream's token): KeepTopK, then softmax (eq. 2).
* Each stream has its own gate ``G`` (one linear layer, sigmoid): ``x_hat = g * x_tilde + (1 - g) * x`` (eq. 3),
  i.e. ``x + g * delta``. By default ``G`` reads the whole token and gives one value per token (the paper: "the
  gate outputs a value between 0 and 1", "lightweight ... for computational efficiency"); ``gate_dim`` up to
  ``width`` gives a value per group of channels, up to one per channel (a width x width layer per stream: on ViT-B
  that alone is 8 % of the FLOPs of the two blocks, more than everything else the adapter adds).
* With ``keep_ratio`` < 1 each stream has a skipping router ``R_S`` (an MLP; tokens ranked by the norm of its
  output, eq. 4): exactly ``ceil(rho * N)`` patch tokens per image go through the adapter, CLS always. The router
  learns as in Mixture-of-Depths: the adapter's change is scaled by ``sigmoid(||R_S(x)||)``.
  ``skip_mode="adapter"`` is the paper's equation: the router reads the layer's block output and picks the tokens
  for the adapter. Skipping saves real time only where skipped tokens also bypass backbone blocks (the adapter is
  a few percent of the FLOPs): ``"block"`` has the router read the block's input and pick the tokens for the
  block and the adapter after it, in every block from the first (Mixture-of-Depths' placement; the paper's Table 7
  speed-ups, 9.7x at 10 % of the tokens, exceed what any scheme with a full first block allows);
  ``"later-blocks"`` sends the tokens the adapter took through the next block too, so the first block sees every
  token (slower than ``block`` at the same keep ratio, and on the tasks measured more accurate).
* A Switch-style load-balancing loss (``balance_weight``) keeps experts from collapsing.

Speed (results unchanged; ``DynaMerModel.set_fast(False)`` runs the plain reference, which the tests compare
with): the load-balancing loss is computed only when asked for (training); in ``later-blocks`` mode a layer hands
the rows it adapted straight to the next block (no scatter and gather of the same rows in between), and without
autograd stream tensors are updated in place (see :mod:`medvtab.methods.dual_stream`); after the last block, in
evaluation, only what the summaries read is adapted (the CLS pair when both streams pool their CLS); the skipping
router's weight and a one-value gate fold into the expert weights, and the experts' bias term joins the
up-projection's product; the routers' small products are padded (see ``PAD_COLUMNS``); and the MoE runs dense or
gathered per size (:meth:`SharedExperts.choose`). ``medvtab perf`` measures all of it.

Choices where the paper is silent: up-projections start at N(0, 1e-3) and gates at 0.5, so every layer
starts close to the identity while all routers already receive gradients; routers are two-layer MLPs of
width ``router_hidden``; experts and routers are width / 12 wide (see ``WIDTH_DIVISOR``); with different backbone
widths experts output the larger width and a linear map per stream projects to the other.
"""
from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from medvtab.backbones import Backbone, check_alignment
from medvtab.backbones.base import BackboneInfo, gather_tokens, put_tokens, scatter_tokens
from medvtab.errors import MedvtabError
from medvtab.methods.base import AdaptedModel, MethodConfig, register_method
from medvtab.methods.dual_stream import DualStreamRunner, Picks

STREAMS = ("general", "medical")
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


def softmax_sorted(values: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension of ``topk`` values (largest first): the same function as ``softmax``, which
    on CPUs is several times slower on a last dimension this short (2 to 8)."""
    if values.shape[-1] == 2:
        p = torch.sigmoid(values[..., :1] - values[..., 1:])
        return torch.cat([p, 1 - p], dim=-1)
    e = (values - values[..., :1]).exp()
    return e / e.sum(dim=-1, keepdim=True)


def _mlp(width: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, out))


# Single-thread CPU matrix products (MKL, AVX2) run several times slower with a few output columns than with 16
# (measured on the development CPU, 12,800 token rows: 96 -> 8 columns 0.91 ms, 96 -> 16 0.55 ms; 8 -> 8 0.29 ms,
# 8 -> 16 0.08 ms). So the fast path computes the routers' small products padded with zero columns to a multiple
# of PAD_COLUMNS, the expert router's first layer and a one-value gate (which read the same tokens) as one; the
# padding's outputs are zero and never read as values.
PAD_COLUMNS = 16


def fused_linear(x: torch.Tensor, layers: list[nn.Linear]) -> torch.Tensor:
    """``[layer(x) for layer in layers]`` concatenated on the last dimension, as one product, then zero columns up
    to a multiple of PAD_COLUMNS."""
    weight = torch.cat([layer.weight for layer in layers])
    bias = torch.cat([layer.bias for layer in layers])
    pad = -weight.shape[0] % PAD_COLUMNS
    return F.linear(x, F.pad(weight, (0, 0, 0, pad)), F.pad(bias, (0, pad)))


def linear_on_padded(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(x[..., :layer.in_features])`` for an ``x`` with padding columns after those (the output of
    :func:`fused_linear`), as one product over all of ``x`` (zero weights on the padding: no strided copy of the
    slice), padded like :func:`fused_linear`; callers read ``[..., :layer.out_features]``."""
    pad_in = x.shape[-1] - layer.in_features
    pad_out = -layer.out_features % PAD_COLUMNS
    return F.linear(x, F.pad(layer.weight, (0, pad_in, 0, pad_out)), F.pad(layer.bias, (0, pad_out)))


# When the MoE is computed gathered (each token through its top-k experts only) instead of densely (all experts
# as two fused matrix products, unselected ones weighted 0). Measured with `medvtab perf` (section "moe": 1,600
# and 12,800 token rows, 4, 8 and 16 experts, top-2, the tiny pair's widths) on the 2-core development CPU. With
# experts 32 wide (four runs): at the default 4 experts dense is faster everywhere (gathering the rows, sorting them
# by expert and scattering the results back cost more than the half of the products it saves: gathered 1.4x-2.3x
# slower); at 8 experts gathered is faster for one stream's pass (a skipping router's kept tokens; about
# 1.1x-1.3x) but not where dense computes one down-projection for both streams (keep ratio 1: dense shares it,
# gathered cannot); at 16 experts gathered wins everywhere (1.2x-2.4x). With experts 8 wide (the tiny pair's
# default) dense wins at every size: the products are too small to pay for the gathering. Rule: gathered over at
# least GATHER_MIN_ROWS token rows, with experts at least GATHER_MIN_BOTTLENECK wide and at least GATHER_MIN_RATIO
# experts per selected one (GATHER_MIN_RATIO_SHARED where dense would share its activations between the streams),
# dense otherwise. The gathered path needs each expert's token count on the host (a synchronisation on a GPU,
# where routing must not wait for the host), so "auto" is dense there.
GATHER_MIN_ROWS = 1024
GATHER_MIN_BOTTLENECK = 32
GATHER_MIN_RATIO = 4
GATHER_MIN_RATIO_SHARED = 8
MOE_IMPLS = ("auto", "dense", "gathered")


class SharedExperts(nn.Module):
    """``n`` bottleneck MLPs on the token pair.

    Densely (:meth:`hidden` + :meth:`mix`, the reference): the hidden activations of all experts at once, then
    one up-projection of the routing-weighted activations (unselected experts have weight 0, so they contribute
    nothing). Gathered (:meth:`gathered`): the (token, expert) pairs sorted by expert, each expert's two products
    on its own tokens only, the weighted outputs summed back per token. Both give the same output (up to float
    rounding); ``impl`` picks one ("auto": :meth:`choose`)."""

    def __init__(self, in_dim: int, bottleneck: int, out_dim: int, num_experts: int, top_k: int = 2):
        super().__init__()
        self.num_experts, self.bottleneck, self.top_k = num_experts, bottleneck, top_k
        self.down = nn.Linear(in_dim, num_experts * bottleneck)
        self.up = nn.Linear(num_experts * bottleneck, out_dim, bias=False)
        self.up_bias = nn.Parameter(torch.zeros(num_experts, out_dim))
        nn.init.normal_(self.up.weight, std=1e-3)
        self.impl = "auto"

    def hidden(self, pair: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.down(pair))

    def mix(self, hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_j weights_j * up_j(hidden_j)`` for sparse ``weights`` (..., n)."""
        h = hidden.unflatten(-1, (self.num_experts, self.bottleneck)) * weights.unsqueeze(-1)
        return self.up(h.flatten(-2)) + weights @ self.up_bias

    def mix_folded(self, hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """:meth:`mix` as one product: the weights join the weighted activations and the expert biases the
        up-projection's columns (a (n x out) product of its own costs as much as the big one on a CPU)."""
        h = hidden.unflatten(-1, (self.num_experts, self.bottleneck)) * weights.unsqueeze(-1)
        h = torch.cat([h.flatten(-2), weights], dim=-1)
        # (in x out) contiguous: with so few rows in the product, F.linear's transposed weight is slower on CPUs
        return h @ torch.cat([self.up.weight, self.up_bias.t()], dim=1).t().contiguous()

    def gathered(self, pair: torch.Tensor, top_idx: torch.Tensor, top_w: torch.Tensor) -> torch.Tensor:
        """``sum_k top_w_k * (up_j(gelu(down_j(pair))) + up_bias_j)`` over each token's experts ``j = top_idx_k``,
        computing each expert on its own tokens only. ``pair`` (..., in), ``top_idx``/``top_w`` (..., k)."""
        n, b, k = self.num_experts, self.bottleneck, top_idx.shape[-1]
        lead = pair.shape[:-1]
        flat = pair.reshape(-1, pair.shape[-1])
        experts = top_idx.reshape(-1)
        order = torch.argsort(experts, stable=True)  # (token, slot) pairs grouped by expert
        counts = torch.bincount(experts, minlength=n).tolist()  # host sync: per-expert segment sizes
        x = flat.index_select(0, order.div(k, rounding_mode="floor"))
        down_w = self.down.weight.view(n, b, -1)
        down_b = self.down.bias.view(n, b)
        outs = []
        for j, chunk in enumerate(x.split(counts)):
            if counts[j]:
                h = F.gelu(F.linear(chunk, down_w[j], down_b[j]))
                outs.append(F.linear(h, self.up.weight[:, j * b:(j + 1) * b], self.up_bias[j]))
        y = torch.cat(outs)
        back = torch.empty_like(order)
        back[order] = torch.arange(order.numel(), device=order.device)
        y = y.index_select(0, back).view(-1, k, y.shape[-1])  # (tokens, k, out) in slot order again
        out = torch.bmm(top_w.reshape(-1, 1, k).to(y.dtype), y).squeeze(1)
        return out.view(*lead, out.shape[-1])

    def choose(self, rows: int, device: torch.device, shared: bool = False) -> str:
        """The implementation for one pass over ``rows`` token rows; ``shared``: dense would compute its hidden
        activations once for both streams (keep ratio 1)."""
        if self.impl != "auto":
            return self.impl
        if device.type != "cpu" or rows < GATHER_MIN_ROWS or self.bottleneck < GATHER_MIN_BOTTLENECK:
            return "dense"
        ratio = GATHER_MIN_RATIO_SHARED if shared else GATHER_MIN_RATIO
        return "gathered" if self.num_experts >= ratio * self.top_k else "dense"


class StreamParts(nn.Module):
    """The per-stream pieces of a DynaMer layer: expert router, gate, skipping router, output projection."""

    def __init__(self, width: int, expert_width: int, cfg: DynaMerConfig, gated: bool):
        super().__init__()
        self.width = width
        router_hidden = cfg.widths(expert_width)[1]
        self.router = _mlp(width, router_hidden, cfg.num_experts)
        gate_dim = {"width": width, "width/2": width // 2, "width/4": width // 4, "1": 1}[cfg.gate_dim]
        if width % gate_dim:
            raise MedvtabError(f"option 'gate_dim': {cfg.gate_dim} does not divide width {width}")
        self.gate = nn.Linear(width, gate_dim) if gated else None
        if self.gate is not None:
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)  # g = 0.5 at start; delta ~ 0 keeps the layer near the identity
        self.skip_router = _mlp(width, router_hidden, router_hidden) if cfg.keep_ratio < 1 else None
        self.project = nn.Linear(expert_width, width) if expert_width != width else None

    def gate_values(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., gate_dim)`` gate values, one per group of ``width / gate_dim`` channels."""
        return torch.sigmoid(self.gate(x))

    @staticmethod
    def apply_gate(gate: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``g * delta`` with each gate value shared by its group of channels (broadcast, never repeated)."""
        if gate.shape[-1] in (1, delta.shape[-1]):
            return gate * delta
        return (delta.unflatten(-1, (gate.shape[-1], -1)) * gate.unsqueeze(-1)).flatten(-2)


class DynaMerLayer(nn.Module):
    """The hook after one block: gated MoE adapter shared by both streams, plus skipping routers."""

    def __init__(self, cfg: DynaMerConfig, general: BackboneInfo, medical: BackboneInfo, merges_cls: bool):
        super().__init__()
        self.cfg = cfg
        self.merges_cls = merges_cls
        self.starts = [0 if merges_cls else info.num_prefix_tokens for info in (general, medical)]
        self.num_patches = general.num_patches
        self.keep = math.ceil(cfg.keep_ratio * self.num_patches)
        expert_width = max(general.width, medical.width)
        self.experts = SharedExperts(general.width + medical.width, cfg.widths(expert_width)[0], expert_width,
                                     cfg.num_experts, cfg.top_k)
        gated = {"general": cfg.gates in ("both", "general"), "medical": cfg.gates in ("both", "medical")}
        self.streams = nn.ModuleList(
            StreamParts(info.width, expert_width, cfg, gated[name]) for name, info in zip(STREAMS, (general, medical)))
        self.widths = (general.width, medical.width)
        self.prefixes = (general.num_prefix_tokens, medical.num_prefix_tokens)
        self._aux: torch.Tensor | None = None
        self._balance: list[tuple[torch.Tensor, torch.Tensor]] = []  # (logits, weights) of the last training forward
        self.record_stats = False
        self.fast = True  # False: the reference implementation (kept for the equality tests)
        self.register_buffer("stats", torch.zeros(2, cfg.num_experts + 3), persistent=False)

    # -- routing pieces ------------------------------------------------------------------------------
    def _route(self, parts: StreamParts, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 2: KeepTopK then softmax -> dense (..., n) weights with exactly top_k non-zeros; balance loss."""
        logits = parts.router(x)
        top_val, top_idx = logits.topk(self.cfg.top_k, dim=-1)
        weights = torch.zeros_like(logits).scatter(-1, top_idx, top_val.softmax(dim=-1))
        n = self.cfg.num_experts
        dispatch = (weights > 0).flatten(0, -2).float().mean(0) / self.cfg.top_k
        balance = n * (dispatch * logits.softmax(-1).flatten(0, -2).mean(0)).sum()
        return weights, balance

    def _select(self, s: int, tokens: torch.Tensor, fast: bool = False):
        """Eq. 4: the ceil(rho * N) patch tokens of stream ``s`` (its whole ``(B, T, width)`` tensor) with the
        largest ||R_S(x)||, in grid order; CLS always. Returns patch indices (B, K), rows in the merged slice, and
        the router weight of each row. ``fast``: the router's products padded (zero columns add exact zeros to
        the norm)."""
        # The router runs on every row and the prefix rows' scores are dropped: a slice of the rows would be
        # copied to contiguous memory first, which costs more than the router on one or two extra rows.
        router = self.streams[s].skip_router
        if fast:
            out = linear_on_padded(F.gelu(fused_linear(tokens, [router[0]])), router[2])
        else:
            out = router(tokens)
        c = 1 if self.merges_cls else 0
        scores = out.norm(dim=-1)[:, self.prefixes[s]:]
        keep = scores.topk(self.keep, dim=1).indices.sort(dim=1).values
        weight = torch.sigmoid(scores.gather(1, keep))
        rows = keep + c
        if c:
            first = torch.zeros_like(keep[:, :1])
            rows = torch.cat([first, rows], dim=1)
            weight = torch.cat([torch.ones_like(weight[:, :1]), weight], dim=1)
        return keep, rows, weight

    def _update(self, s: int, x, pair_hidden, merged_len: int, router_weight=None):
        parts = self.streams[s]
        weights, balance = self._route(parts, x)
        delta = self.experts.mix(pair_hidden, weights)
        if parts.project is not None:
            delta = parts.project(delta)
        gate = parts.gate_values(x) if parts.gate is not None else None
        if gate is not None:
            delta = parts.apply_gate(gate, delta)  # eq. 3: g * (x + delta) + (1 - g) * x
        if router_weight is not None:
            delta = delta * router_weight.unsqueeze(-1)
        if self.record_stats and not self.training:
            self._record(s, weights, gate, x.shape[1] / merged_len)
        return x + delta, balance

    @torch.no_grad()
    def _record(self, s, weights, gate, kept_fraction):
        n = self.cfg.num_experts
        b = weights.shape[0]
        row = self.stats[s]
        row[:n] += (weights > 0).float().flatten(0, -2).mean(0) * b / self.cfg.top_k
        row[n] += (gate.mean() if gate is not None else torch.ones((), device=row.device)) * b
        row[n + 1] += kept_fraction * b
        row[n + 2] += b

    # -- the hook ------------------------------------------------------------------------------------
    @property
    def fast_protocol(self) -> bool:
        return self.fast

    @property
    def routes_own_block(self) -> bool:
        """``skip_mode: block``: the skipping router picks, from the block's input, the tokens that go through the
        block before this layer and through this layer's adapter."""
        return self.streams[0].skip_router is not None and self.cfg.skip_mode == "block"

    def pick(self, xg: torch.Tensor, xm: torch.Tensor) -> Picks:
        """Eq. 4 on the block's input tokens of both streams."""
        chosen = [self._select(s, x, fast=self.fast) for s, x in enumerate((xg, xm))]
        return Picks(keep=(chosen[0][0], chosen[1][0]), state=chosen)

    def _next_picks(self, chosen, rows=(None, None)) -> Picks | None:
        """``skip_mode: later-blocks``: the tokens this layer's adapter took also go through the next block."""
        if self.cfg.skip_mode != "later-blocks" or chosen[0] is None or chosen[1] is None:
            return None
        return Picks(keep=(chosen[0][0], chosen[1][0]), rows=rows)

    @property
    def aux_loss(self) -> torch.Tensor | None:
        """The load-balancing loss of the last forward (computed when asked: evaluation never needs it)."""
        if self._aux is None and self._balance:
            self._aux = torch.stack([self._balance_loss(*pair) for pair in self._balance]).sum()
            self._balance = []
        return self._aux

    def _balance_loss(self, logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        n = self.cfg.num_experts
        dispatch = (weights > 0).flatten(0, -2).float().mean(0) / self.cfg.top_k
        return n * (dispatch * logits.softmax(-1).flatten(0, -2).mean(0)).sum()

    def forward(self, xg: torch.Tensor, xm: torch.Tensor, picks: Picks | None = None,
                needed: tuple[str, str] | None = None, inplace: bool = False, carry: bool = False):
        """The layer on both streams -> ``(xg, xm, picks for the next block)`` (see
        :mod:`medvtab.methods.dual_stream`). ``picks``: with ``block``, the tokens :meth:`pick` chose before
        the block; otherwise the skipping router chooses from ``xg``/``xm``. ``needed``, ``inplace`` and ``carry``:
        the runner's hints."""
        given = picks.state if picks is not None and self.routes_own_block else None
        if not self.fast:
            xg, xm, chosen = self.forward_reference(xg, xm, given)
            return xg, xm, self._next_picks(chosen)
        carry = carry and self.cfg.skip_mode == "later-blocks"
        xg, xm, chosen, rows = self._forward_fast(xg, xm, given, needed, inplace and not torch.is_grad_enabled(),
                                                  carry)
        return xg, xm, self._next_picks(chosen, rows)

    def _router_and_gate(self, parts: StreamParts, x: torch.Tensor):
        """Expert-router logits and gate values of tokens ``x``: the router's first layer and a one-value gate
        read ``x`` in one padded product."""
        hidden, gate = parts.router[0].out_features, None
        fuse_gate = parts.gate is not None and parts.gate.out_features == 1
        z = fused_linear(x, [parts.router[0]] + ([parts.gate] if fuse_gate else []))
        if fuse_gate:
            gate = torch.sigmoid(z[..., hidden:hidden + 1])
        elif parts.gate is not None:
            gate = parts.gate_values(x)
        logits = linear_on_padded(F.gelu(z), parts.router[2])[..., :self.cfg.num_experts]
        return logits, gate

    def _delta(self, s: int, x: torch.Tensor, pair: torch.Tensor | None, hidden: torch.Tensor | None,
               router_weight: torch.Tensor | None, merged_len: int) -> torch.Tensor:
        """Stream ``s``'s gated change of its tokens ``x`` (the same values as :meth:`_update` minus ``x``): from
        the shared dense ``hidden`` when given, else from ``pair`` (dense or gathered, per
        :meth:`SharedExperts.choose`)."""
        parts = self.streams[s]
        logits, gate = self._router_and_gate(parts, x)
        top_val, top_idx = logits.topk(self.cfg.top_k, dim=-1)
        top_w = softmax_sorted(top_val)
        impl = "dense" if hidden is not None else self.experts.choose(x.shape[0] * x.shape[1], x.device)
        weights = None
        if impl == "dense" or self.training or self.record_stats:
            weights = torch.zeros_like(logits).scatter(-1, top_idx, top_w)
        if self.training:
            self._balance.append((logits, weights))
        router_weight = router_weight.unsqueeze(-1) if router_weight is not None else None
        # The change is linear in the expert weights, so per-token factors fold into them (a (tokens x n) product
        # instead of one over (tokens x width)): the skipping router's weight, and a one-value-per-token gate.
        # Not past a projection's bias.
        foldable = parts.project is None
        gate_folds = foldable and gate is not None and gate.shape[-1] == 1
        scale = router_weight if foldable else None
        if gate_folds:
            scale = gate if scale is None else scale * gate
        if impl == "dense":
            w = weights if scale is None else weights * scale
            delta = self.experts.mix_folded(hidden if hidden is not None else self.experts.hidden(pair), w)
        else:
            w = top_w if scale is None else top_w * scale
            delta = self.experts.gathered(pair, top_idx, w)
        if parts.project is not None:
            delta = parts.project(delta)
        if gate is not None and not gate_folds:
            delta = parts.apply_gate(gate, delta)  # eq. 3
        if router_weight is not None and not foldable:
            delta = delta * router_weight
        if self.record_stats and not self.training:
            self._record(s, weights, gate, x.shape[1] / merged_len)
        return delta

    def _forward_fast(self, xg: torch.Tensor, xm: torch.Tensor, given, needed, inplace: bool, carry: bool):
        full = (xg, xm)
        starts = self.starts
        if needed is None or self.training or self.record_stats:
            needed = ("all", "all")
        self._aux, self._balance = None, []
        merged = [xg[:, starts[0]:], xm[:, starts[1]:]]
        merged_len = merged[0].shape[1]
        skip = self.streams[0].skip_router is not None
        outs: list[tuple | None] = [None, None]
        chosen = list(given) if given is not None else [None, None]
        shared = pair_all = None
        if not skip and "all" in needed:
            pair_all = torch.cat(merged, dim=-1)  # each stream's own pass reads it where nothing is shared
        # The experts' hidden activations once for all token pairs, serving both streams, where that is no more
        # rows than their own passes: keep ratio 1, or with skipping when both streams' kept rows >= all rows.
        share = needed == ("all", "all") and (not skip or 2 * (self.keep + int(self.merges_cls)) >= merged_len)
        if share and self.experts.choose(xg.shape[0] * merged_len, xg.device, shared=True) == "dense":
            pair_all = torch.cat(merged, dim=-1) if pair_all is None else pair_all
            shared = self.experts.hidden(pair_all)
        for s in (0, 1):
            if needed[s] == "none":  # nothing of this stream's output is read
                continue
            if needed[s] == "cls":  # only the CLS (row 0, merged) is read: adapt it alone
                x = merged[s][:, :1]
                pair = torch.cat([merged[0][:, :1], merged[1][:, :1]], dim=-1)
                outs[s] = ("cls", x + self._delta(s, x, pair, None, None, merged_len))
            elif not skip:
                outs[s] = ("all", self._delta(s, merged[s], pair_all, shared, None, merged_len))
            else:
                if chosen[s] is None:
                    chosen[s] = self._select(s, full[s], fast=True)
                _, rows, weight = chosen[s]
                if shared is not None:
                    x = gather_tokens(full[s], rows + starts[s])
                    delta = self._delta(s, x, None, gather_tokens(shared, rows), weight, merged_len)
                else:
                    both = [gather_tokens(full[0], rows + starts[0]), gather_tokens(full[1], rows + starts[1])]
                    x = both[s]
                    delta = self._delta(s, x, torch.cat(both, dim=-1), None, weight, merged_len)
                outs[s] = ("rows", rows, x + delta)
        # Both streams' inputs have been read: now the outputs may overwrite them.
        new, rows_on = list(full), [None, None]
        for s in (0, 1):
            if outs[s] is None:
                continue
            tokens, start = full[s], starts[s]
            if outs[s][0] == "all":
                delta = outs[s][1]
                if inplace and tokens.is_contiguous():
                    tokens[:, start:].add_(delta)
                else:
                    updated = merged[s] + delta
                    new[s] = torch.cat([tokens[:, :start], updated], dim=1) if start else updated
            elif outs[s][0] == "cls":
                if inplace:
                    tokens[:, :1] = outs[s][1]
                else:
                    new[s] = torch.cat([outs[s][1], tokens[:, 1:]], dim=1)
            else:
                _, rows, values = outs[s]
                if carry:  # the next block's input rows (prefix first, as run_block orders them)
                    rows_on[s] = values if start == 0 else torch.cat([tokens[:, :self.prefixes[s]], values], dim=1)
                else:
                    new[s] = put_tokens(tokens, rows + start, values, inplace)
        return new[0], new[1], chosen, tuple(rows_on)

    def forward_reference(self, xg: torch.Tensor, xm: torch.Tensor, given=None):
        """The plain implementation, kept as the reference the fast path is tested against."""
        chosen = list(given) if given is not None else [None, None]
        sg, sm = self.starts
        merged = [xg[:, sg:], xm[:, sm:]]
        merged_len = merged[0].shape[1]
        balances = []
        if self.streams[0].skip_router is None:
            hidden = self.experts.hidden(torch.cat(merged, dim=-1))  # shared: both streams adapt every token
            new = []
            for s in (0, 1):
                out, bal = self._update(s, merged[s], hidden, merged_len)
                new.append(out)
                balances.append(bal)
        else:
            new = []
            for s in (0, 1):
                if chosen[s] is None:
                    chosen[s] = self._select(s, (xg, xm)[s])
                _, rows, weight = chosen[s]
                pair = torch.cat([gather_tokens(merged[0], rows), gather_tokens(merged[1], rows)], dim=-1)
                out, bal = self._update(s, gather_tokens(merged[s], rows), self.experts.hidden(pair), merged_len,
                                        weight)
                new.append(scatter_tokens(merged[s], rows, out))
                balances.append(bal)
        self._aux, self._balance = torch.stack(balances).sum(), []
        xg = torch.cat([xg[:, :sg], new[0]], dim=1) if sg else new[0]
        xm = torch.cat([xm[:, :sm], new[1]], dim=1) if sm else new[1]
        return xg, xm, chosen

    def summary(self) -> dict:
        n = self.cfg.num_experts
        out = {}
        for s, name in enumerate(STREAMS):
            row = self.stats[s].tolist()
            images = row[n + 2] or 1.0
            out[name] = {
                "expert_usage": [round(u / images, 4) for u in row[:n]],
                "mean_gate": round(row[n] / images, 4) if self.streams[s].gate is not None else None,
                "kept_fraction": round(row[n + 1] / images, 4),
            }
        return out


class DynaMerModel(AdaptedModel):
    def __init__(self, cfg: DynaMerConfig, general: Backbone, medical: Backbone, num_classes: int):
        super().__init__()
        if medical is None:
            raise MedvtabError("method 'dynamer' needs both a general and a medical backbone")
        self.cfg = cfg
        layers = parse_layers(cfg.layers, general.depth)
        alignment = check_alignment(general.info, medical.info)
        alignment.require()
        hooks = {i: DynaMerLayer(cfg, general.info, medical.info, alignment.merges_cls) for i in layers}
        self.runner = DualStreamRunner(general, medical, hooks)
        self.head = nn.Linear(general.width + medical.width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        xg, xm = self.runner(images, summaries_only=True)
        features = torch.cat([self.runner.general.summary(xg), self.runner.medical.summary(xm)], dim=-1)
        return self.head(features)

    def set_fast(self, on: bool) -> None:
        """False: run the reference implementation (plain runner protocol, the layers' reference forward)."""
        self.runner.fast = on
        for _, layer in self._layers():
            layer.fast = on

    def set_moe_impl(self, impl: str) -> None:
        """How every layer computes its experts: "auto" (by size, see :class:`SharedExperts`), "dense" or
        "gathered"."""
        if impl not in MOE_IMPLS:
            raise MedvtabError(f"MoE implementation must be one of {', '.join(MOE_IMPLS)}, got '{impl}'")
        for _, layer in self._layers():
            layer.experts.impl = impl

    def _layers(self):
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
