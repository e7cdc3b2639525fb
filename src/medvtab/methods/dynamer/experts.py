"""DynaMer's adaptation experts, shared by both streams: ``n`` bottleneck MLPs on the token pair ``[x_gen; x_med]``.

Expert ``j``'s change of a token is ``delta_j = up_j(gelu(down_j(pair))) + up_bias_j``. One function, three forms
that give the same output up to float rounding: :meth:`SharedExperts.mix` (the reference, dense: all experts'
hidden activations at once, one up-projection of the routing-weighted activations, unselected experts weighted
0), :meth:`SharedExperts.mix_folded` (the same as one product) and :meth:`SharedExperts.gathered` (each token
through its top-k experts only). The paper's layer uses the first; the fast layer picks one of the others by
size (:meth:`SharedExperts.choose`, measured by ``medvtab perf``'s "moe" section).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Gathering the (token, expert) pairs, sorting them by expert and scattering the results back costs more than
# the half of the products it saves, unless there are many rows, wide experts and many experts per selected one
# (more still where dense computes one down-projection for both streams). Gathering needs each expert's token
# count on the host, a synchronisation on a GPU (where routing must not wait for the host): "auto" is dense there.
GATHER_MIN_ROWS = 1024
GATHER_MIN_BOTTLENECK = 32
GATHER_MIN_RATIO = 4
GATHER_MIN_RATIO_SHARED = 8
MOE_IMPLS = ("auto", "dense", "gathered")


class SharedExperts(nn.Module):
    """``n`` bottleneck MLPs on the token pair, stored as one down- and one up-projection; ``impl``: the fast
    layer's form ("auto": :meth:`choose`)."""

    def __init__(self, in_dim: int, bottleneck: int, out_dim: int, num_experts: int, top_k: int = 2):
        super().__init__()
        self.num_experts, self.bottleneck, self.top_k = num_experts, bottleneck, top_k
        self.down = nn.Linear(in_dim, num_experts * bottleneck)
        self.up = nn.Linear(num_experts * bottleneck, out_dim, bias=False)
        self.up_bias = nn.Parameter(torch.zeros(num_experts, out_dim))
        nn.init.normal_(self.up.weight, std=1e-3)
        self.impl = "auto"

    def hidden(self, pair: torch.Tensor) -> torch.Tensor:
        """Every expert's hidden activations ``(..., n * bottleneck)`` of token pairs ``(..., in)``."""
        return F.gelu(self.down(pair))

    def mix(self, hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_j weights_j * delta_j`` for sparse ``weights`` (..., n)."""
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
        """``sum_k top_w_k * delta_j`` over each token's experts ``j = top_idx_k``, computing each expert on its own
        tokens only. ``pair`` (..., in), ``top_idx``/``top_w`` (..., k)."""
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
        """The form for one pass over ``rows`` token rows ("dense": :meth:`mix_folded`, or "gathered");
        ``shared``: dense would compute its hidden activations once for both streams (keep ratio 1)."""
        if self.impl != "auto":
            return self.impl
        if device.type != "cpu" or rows < GATHER_MIN_ROWS or self.bottleneck < GATHER_MIN_BOTTLENECK:
            return "dense"
        ratio = GATHER_MIN_RATIO_SHARED if shared else GATHER_MIN_RATIO
        return "gathered" if self.num_experts >= ratio * self.top_k else "dense"
