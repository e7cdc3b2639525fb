"""The DynaMer layer production runs: the paper's layer (:mod:`.layer`) computed with less work, same parameters,
same results up to float rounding (``tests/methods/dynamer/test_fast.py``; ``medvtab perf`` times it).

What it saves: the skipping router's straight-through factor (exactly 1) is applied only where autograd records
it; after the last block, in evaluation, only what the summaries read is adapted (the CLS pair when both streams pool their CLS; see
:class:`~medvtab.methods.dual_stream.StepHints`); without autograd stream tensors are updated in place; in
``later-blocks`` mode the rows the adapter took go straight to the next block (no scatter and gather of the same
rows in between); the skipping router's factor and a one-value gate fold into the expert weights, and the
experts' bias term joins the up-projection's product; the routers' small products are padded (``PAD_COLUMNS``);
and the experts run dense or gathered by size (:meth:`SharedExperts.choose`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medvtab.backbones.base import BackboneInfo, gather_tokens, put_tokens
from medvtab.methods.dual_stream import ALL_TOKENS, Picks, StepHints
from medvtab.methods.dynamer.config import DynaMerConfig
from medvtab.methods.dynamer.layer import DynaMerLayer

# Single-thread CPU matrix products (MKL) run several times slower with a few output columns than with 16. So
# the routers' small products are padded with zero columns to a multiple of PAD_COLUMNS, the expert router's first
# layer and a one-value gate (which read the same tokens) computed as one; the padding's outputs are zero and
# never read as values.
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


def softmax_sorted(values: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension of ``topk`` values (largest first): the same function as ``softmax``, which
    on CPUs is several times slower on a last dimension this short (2 to 8)."""
    if values.shape[-1] == 2:
        p = torch.sigmoid(values[..., :1] - values[..., 1:])
        return torch.cat([p, 1 - p], dim=-1)
    e = (values - values[..., :1]).exp()
    return e / e.sum(dim=-1, keepdim=True)


class FastDynaMerLayer(DynaMerLayer):
    """:class:`DynaMerLayer` computed faster; ``fast = False`` runs the paper's layer (the reference)."""

    def __init__(self, cfg: DynaMerConfig, general: BackboneInfo, medical: BackboneInfo, merges_cls: bool,
                 gated: bool = True):
        super().__init__(cfg, general, medical, merges_cls, gated)
        self.fast = True

    def skip_scores(self, s: int, tokens: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            return super().skip_scores(s, tokens)
        router = self.streams[s].skip_router  # padded products: the zero columns add exact zeros to the norm
        return linear_on_padded(F.gelu(fused_linear(tokens, [router[0]])), router[2]).norm(dim=-1)

    def forward(self, xg: torch.Tensor, xm: torch.Tensor, picks: Picks | None = None,
                hints: StepHints = StepHints()):
        if not self.fast:
            return super().forward(xg, xm, picks, hints)
        given = picks.state if picks is not None and self.routes_own_block else None
        carry = hints.carry and self.cfg.skip_mode == "later-blocks"
        xg, xm, chosen, rows = self._forward_fast(xg, xm, given, hints.needed,
                                                  hints.inplace and not torch.is_grad_enabled(), carry)
        return xg, xm, self.next_picks(chosen, rows)

    def _router_and_gate(self, s: int, x: torch.Tensor):
        """Expert-router logits and gate values of stream ``s``'s tokens ``x``: the router's first layer and a
        one-value gate read ``x`` in one padded product."""
        parts, router = self.streams[s], self.router_of(s)
        hidden, gate = router[0].out_features, None
        fuse_gate = parts.gate is not None and parts.gate.out_features == 1
        z = fused_linear(x, [router[0]] + ([parts.gate] if fuse_gate else []))
        if fuse_gate:
            gate = torch.sigmoid(z[..., hidden:hidden + 1])
        elif parts.gate is not None:
            gate = parts.gate_values(x)
        logits = linear_on_padded(F.gelu(z), router[2])[..., :self.cfg.num_experts]
        return logits, gate

    def _delta(self, s: int, x: torch.Tensor, pair: torch.Tensor | None, hidden: torch.Tensor | None,
               router_weight: torch.Tensor | None, merged_len: int) -> torch.Tensor:
        """Stream ``s``'s gated change of its tokens ``x`` (:meth:`adapt` minus ``x``): from the shared dense
        ``hidden`` when given, else from ``pair`` (dense or gathered, per :meth:`SharedExperts.choose`)."""
        parts = self.streams[s]
        logits, gate = self._router_and_gate(s, x)
        top_val, top_idx = logits.topk(self.cfg.top_k, dim=-1)
        top_w = softmax_sorted(top_val)
        impl = "dense" if hidden is not None else self.experts.choose(x.shape[0] * x.shape[1], x.device)
        weights = None
        if impl == "dense" or self.training or self.record_stats:
            weights = torch.zeros_like(logits).scatter(-1, top_idx, top_w)
        if self.training and self.cfg.balance_weight:
            self._balance.append((logits, weights))
        # the straight-through factor is exactly 1: only its gradient matters
        router_weight = router_weight.unsqueeze(-1) if router_weight is not None and torch.is_grad_enabled() else None
        # The change is linear in the expert weights, so per-token factors fold into them (a (tokens x n) product
        # instead of one over (tokens x width)): the skipping router's factor, and a one-value-per-token gate.
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

    def _forward_fast(self, xg: torch.Tensor, xm: torch.Tensor, given, needed: tuple[str, str], inplace: bool,
                      carry: bool):
        full = (xg, xm)
        starts = self.starts
        if self.training or self.record_stats:
            needed = ALL_TOKENS
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
        share = needed == ALL_TOKENS and (not skip or 2 * (self.keep + int(self.merges_cls)) >= merged_len)
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
                    chosen[s] = self.select(s, full[s])
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
