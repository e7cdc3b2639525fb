"""The DynaMer layer as the paper writes it (section 3 of ``dynamer-paper.txt``): the hook after one block pair.

Per merged token pair ``(x_gen,i, x_med,i)`` (patch tokens; CLS too when both streams have one):

* Eq. 2, the MoE adapter (:meth:`DynaMerLayer.route`, :meth:`DynaMerLayer.adapt`): experts ``AdapE_j`` shared by
  both streams are bottleneck MLPs on the pair (:mod:`.experts`), each an adapter layer with its residual on the
  stream's own token, ``AdapE_j(x_s) = x_s + delta_j``, so ``x_tilde = sum_j p_j AdapE_j = x_s + sum_j p_j delta_j``
  (the top-k weights sum to one). One adaptation router ``R_A`` (an MLP; KeepTopK, softmax) belongs to the shared
  adapter and reads each stream's own token, so the two tokens of a pair may pick different experts ("their token
  information seen by the router is not the same"); ``router: per-stream`` gives each stream its own (also where
  the widths differ, since one MLP cannot read both).
* Eq. 3, the gate (:meth:`DynaMerLayer.gate`): per stream one linear layer ``G``, ``x_hat = g * x_tilde + (1 - g) *
  x``, i.e. ``x + g * (x_tilde - x)``. By default ``G`` gives a gating vector of the token's width (Table 5's
  768/768 row, the configuration of Table 1); ``gate_dim`` down to 1 gives one value per group of channels, down
  to one per token. Only the layers in ``gated_layers`` have gates (Table 6); the others use ``x_tilde``.
* Eq. 4, the layer-wise skipping router (:meth:`DynaMerLayer.select`), with ``keep_ratio`` < 1: per stream an MLP
  ``R_S``; the ``ceil(rho * N)`` patch tokens with the largest ``||R_S(x)||`` go through the adapter, CLS always,
  the others skip it. TopK has no gradient, so the router learns through a straight-through factor on the
  adapter's change: 1 in the forward pass (the paper's equation, and keep ratio 1 computes exactly what the
  skipping rows compute on their kept tokens), the gradient of ``sigmoid(||R_S(x)||)`` in the backward pass (as
  in Mixture-of-Depths, whose factor would also scale every change by [0.5, 1)). ``skip_mode="adapter"`` is the
  paper's equation (the router reads the block's output and picks the adapter's tokens). Skipping saves real
  time only where skipped tokens also bypass backbone blocks (the adapter is a few percent of the FLOPs):
  ``"block"`` has the router read the block's input and pick the tokens for the block and the adapter after it,
  in every block from the first (Mixture-of-Depths' placement; the paper's Table 7 speed-ups exceed what any
  scheme with a full first block allows); ``"later-blocks"`` sends the tokens the adapter took through the next
  block too (the first block sees every token).
* Not in the paper, off by default: a Switch-style load-balancing loss (``balance_weight``).

Choices where the paper is silent: up-projections start at N(0, 1e-3) and gates at 0.5, so every layer starts
close to the identity while all routers already receive gradients; routers are two-layer MLPs of width
``router_hidden``; experts and routers are width / ``width_divisor`` wide; with different backbone widths experts
output the larger width and a linear map per stream projects to the other.

Production runs :class:`~medvtab.methods.dynamer.fast.FastDynaMerLayer`, the same function computed faster.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from medvtab.backbones.base import BackboneInfo, gather_tokens, scatter_tokens
from medvtab.errors import MedvtabError
from medvtab.methods.dual_stream import STREAMS, DualStreamHook, Picks, StepHints, merge_starts
from medvtab.methods.dynamer.config import DynaMerConfig
from medvtab.methods.dynamer.experts import SharedExperts


def _mlp(width: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, out))


class StreamParts(nn.Module):
    """The per-stream pieces of a DynaMer layer: gate, skipping router, output projection, and the adaptation router
    where each stream has its own (``own_router``)."""

    def __init__(self, width: int, expert_width: int, cfg: DynaMerConfig, gated: bool, own_router: bool):
        super().__init__()
        self.width = width
        router_hidden = cfg.widths(expert_width)[1]
        self.router = _mlp(width, router_hidden, cfg.num_experts) if own_router else None
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


class Selection(NamedTuple):
    """Eq. 4's choice in one stream: patch indices ``(B, K)`` in grid order, the rows of the merged tokens that
    go through the adapter (the CLS first where it merges), and the straight-through factor of each row (1 in the
    forward pass, the skipping router's gradient in the backward pass)."""
    keep: torch.Tensor
    rows: torch.Tensor
    weight: torch.Tensor


class DynaMerLayer(DualStreamHook):
    """The hook after one block: gated MoE adapter shared by both streams, plus skipping routers."""

    def __init__(self, cfg: DynaMerConfig, general: BackboneInfo, medical: BackboneInfo, merges_cls: bool,
                 gated: bool = True):
        super().__init__()
        self.cfg = cfg
        self.merges_cls = merges_cls
        self.starts = merge_starts(general, medical, merges_cls)
        self.keep = math.ceil(cfg.keep_ratio * general.num_patches)
        expert_width = max(general.width, medical.width)
        self.experts = SharedExperts(general.width + medical.width, cfg.widths(expert_width)[0], expert_width,
                                     cfg.num_experts, cfg.top_k)
        shared = cfg.router == "shared" and general.width == medical.width
        # the adaptation router of the shared MoE adapter, reading each stream's own tokens
        self.router = _mlp(general.width, cfg.widths(expert_width)[1], cfg.num_experts) if shared else None
        gates = {"general": gated and cfg.gates in ("both", "general"),
                 "medical": gated and cfg.gates in ("both", "medical")}
        self.streams = nn.ModuleList(StreamParts(info.width, expert_width, cfg, gates[name], not shared)
                                     for name, info in zip(STREAMS, (general, medical)))
        self.prefixes = (general.num_prefix_tokens, medical.num_prefix_tokens)
        self._aux: torch.Tensor | None = None
        self._balance: list[tuple[torch.Tensor, torch.Tensor]] = []  # (logits, weights) of the last training forward
        self.record_stats = False
        self.register_buffer("stats", torch.zeros(2, cfg.num_experts + 3), persistent=False)

    # -- the paper's equations -----------------------------------------------------------------------
    def router_of(self, s: int) -> nn.Sequential:
        """The adaptation router ``R_A`` that reads stream ``s``'s tokens: the shared one, or the stream's own."""
        return self.router if self.router is not None else self.streams[s].router

    def route(self, s: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 2's router on stream ``s``'s tokens: Softmax(KeepTopK(R_A(x), k)) as dense ``(..., n)`` weights with
        exactly ``k`` non-zeros; also R_A(x) (the load-balancing loss reads it)."""
        logits = self.router_of(s)(x)
        top_val, top_idx = logits.topk(self.cfg.top_k, dim=-1)
        return torch.zeros_like(logits).scatter(-1, top_idx, top_val.softmax(dim=-1)), logits

    def gate(self, s: int, x: torch.Tensor) -> torch.Tensor | None:
        """Eq. 3's sigma(G(x)) of stream ``s`` (None where the stream has no gate: ``x_hat = x_tilde``)."""
        parts = self.streams[s]
        return parts.gate_values(x) if parts.gate is not None else None

    def adapt(self, s: int, x: torch.Tensor, hidden: torch.Tensor, merged_len: int,
              router_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Eqs. 2 and 3 on stream ``s``'s tokens ``x`` -> ``x_hat = x + g * (x_tilde - x)``. ``hidden``: the experts'
        hidden activations of the tokens' pairs; ``router_weight``: the skipping router's straight-through factor of
        each token (eq. 4; 1 in value); ``merged_len``: all merged tokens (for the statistics)."""
        parts = self.streams[s]
        weights, logits = self.route(s, x)
        if self.training and self.cfg.balance_weight:
            self._balance.append((logits, weights))
        change = self.experts.mix(hidden, weights)  # x_tilde - x
        if parts.project is not None:
            change = parts.project(change)
        gate = self.gate(s, x)
        if gate is not None:
            change = parts.apply_gate(gate, change)
        if router_weight is not None:
            change = change * router_weight.unsqueeze(-1)
        if self.record_stats and not self.training:
            self._record(s, weights, gate, x.shape[1] / merged_len)
        return x + change

    def skip_scores(self, s: int, tokens: torch.Tensor) -> torch.Tensor:
        """Eq. 4's ||R_S(x)|| for each of stream ``s``'s tokens ``(B, T, width)`` -> ``(B, T)``."""
        return self.streams[s].skip_router(tokens).norm(dim=-1)

    def select(self, s: int, tokens: torch.Tensor) -> Selection:
        """Eq. 4: the ceil(rho * N) patch tokens of stream ``s`` (its whole ``(B, T, width)`` tensor) with the
        largest ||R_S(x)||, in grid order; CLS always."""
        # The router runs on every row and the prefix rows' scores are dropped: a slice of the rows would be
        # copied to contiguous memory first, which costs more than the router on one or two extra rows.
        scores = self.skip_scores(s, tokens)[:, self.prefixes[s]:]
        keep = scores.topk(self.keep, dim=1).indices.sort(dim=1).values
        weight = torch.sigmoid(scores.gather(1, keep))
        weight = weight - weight.detach() + 1  # exactly 1; its gradient is sigmoid's
        if not self.merges_cls:
            return Selection(keep, keep, weight)
        first = torch.zeros_like(keep[:, :1])
        return Selection(keep, torch.cat([first, keep + 1], dim=1),
                         torch.cat([torch.ones_like(weight[:, :1]), weight], dim=1))

    def forward(self, xg: torch.Tensor, xm: torch.Tensor, picks: Picks | None = None,
                hints: StepHints = StepHints()):
        """Both streams' block outputs -> ``(xg, xm, picks for the next block)``. ``picks``: with ``skip_mode:
        block``, the tokens :meth:`pick` chose before the block; otherwise the skipping router chooses here.
        The hints are for the fast layer."""
        self._aux, self._balance = None, []
        full = (xg, xm)
        merged = [x[:, start:] for x, start in zip(full, self.starts)]
        merged_len = merged[0].shape[1]
        chosen = [None, None]
        if self.streams[0].skip_router is None:
            hidden = self.experts.hidden(torch.cat(merged, dim=-1))  # shared: both streams adapt every token
            new = [self.adapt(s, merged[s], hidden, merged_len) for s in (0, 1)]
        else:
            if picks is not None and self.routes_own_block:
                chosen = list(picks.state)
            new = []
            for s in (0, 1):
                if chosen[s] is None:
                    chosen[s] = self.select(s, full[s])
                rows = chosen[s].rows
                pair = torch.cat([gather_tokens(merged[0], rows), gather_tokens(merged[1], rows)], dim=-1)
                adapted = self.adapt(s, gather_tokens(merged[s], rows), self.experts.hidden(pair), merged_len,
                                     chosen[s].weight)
                new.append(scatter_tokens(merged[s], rows, adapted))  # the skipped tokens stay as they are
        xg, xm = (torch.cat([x[:, :start], n], dim=1) if start else n for x, n, start in zip(full, new, self.starts))
        return xg, xm, self.next_picks(chosen)

    # -- the runner's protocol -----------------------------------------------------------------------
    @property
    def routes_own_block(self) -> bool:
        """``skip_mode: block``: the skipping router picks, from the block's input, the tokens that go through the
        block before this layer and through this layer's adapter."""
        return self.streams[0].skip_router is not None and self.cfg.skip_mode == "block"

    def pick(self, xg: torch.Tensor, xm: torch.Tensor) -> Picks:
        """Eq. 4 on the block's input tokens of both streams."""
        chosen = [self.select(s, x) for s, x in enumerate((xg, xm))]
        return Picks(keep=(chosen[0].keep, chosen[1].keep), state=chosen)

    def next_picks(self, chosen: list[Selection | None], rows=(None, None)) -> Picks | None:
        """``skip_mode: later-blocks``: the tokens this layer's adapter took also go through the next block."""
        if self.cfg.skip_mode != "later-blocks" or chosen[0] is None or chosen[1] is None:
            return None
        return Picks(keep=(chosen[0].keep, chosen[1].keep), rows=rows)

    # -- load balancing and statistics ---------------------------------------------------------------
    @property
    def aux_loss(self) -> torch.Tensor | None:
        """The load-balancing loss of the last training forward (computed when asked)."""
        if self._aux is None and self._balance:
            self._aux = torch.stack([self._balance_loss(*pair) for pair in self._balance]).sum()
            self._balance = []
        return self._aux

    def _balance_loss(self, logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        n = self.cfg.num_experts
        dispatch = (weights > 0).flatten(0, -2).float().mean(0) / self.cfg.top_k
        return n * (dispatch * logits.softmax(-1).flatten(0, -2).mean(0)).sum()

    @torch.no_grad()
    def _record(self, s, weights, gate, kept_fraction):
        n = self.cfg.num_experts
        b = weights.shape[0]
        row = self.stats[s]
        row[:n] += (weights > 0).float().flatten(0, -2).mean(0) * b / self.cfg.top_k
        row[n] += (gate.mean() if gate is not None else torch.ones((), device=row.device)) * b
        row[n + 1] += kept_fraction * b
        row[n + 2] += b

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
