"""Section ``moe``: the MoE adapter of one DynaMer layer computed densely and gathered per expert, their outputs
compared, and which one ``auto`` picks for each size (see :class:`medvtab.methods.dynamer.experts.SharedExperts`)."""
from __future__ import annotations

import torch

from medvtab.backbones import check_alignment
from medvtab.engine.precision import autocast
from medvtab.methods import make_config
from medvtab.methods.dynamer.experts import SharedExperts
from medvtab.perf.context import Context, under_inference


def measure_moe(ctx: Context) -> dict:
    cfg = make_config("dynamer", {})
    gi, mi = ctx.general.info, ctx.medical.info
    tokens = check_alignment(gi, mi).merged_tokens
    in_dim, out_dim = gi.width + mi.width, max(gi.width, mi.width)
    bottleneck = cfg.widths(out_dim)[0]
    rows = []
    for batch in ctx.cfg.moe_batches:
        for n in ctx.cfg.moe_experts:
            k = min(cfg.top_k, n)
            gen = torch.Generator().manual_seed(n)
            torch.manual_seed(n)
            experts = SharedExperts(in_dim, bottleneck, out_dim, n, k).to(ctx.device)
            with torch.no_grad():
                experts.up.weight.normal_(std=0.02)
                experts.up_bias.normal_(std=0.02)
            count = batch * tokens
            pair = torch.randn(count, in_dim, generator=gen).to(ctx.device)
            logits = torch.randn(2, count, n, generator=gen).to(ctx.device)
            top_val, top_idx = logits.topk(k, dim=-1)
            top_w = top_val.softmax(-1)
            weights = torch.zeros_like(logits).scatter(-1, top_idx, top_w)

            def dense(s=0):
                return experts.mix_folded(experts.hidden(pair), weights[s])

            def dense_shared():
                hidden = experts.hidden(pair)
                return [experts.mix_folded(hidden, weights[s]) for s in (0, 1)]

            def gathered(s=0):
                return experts.gathered(pair, top_idx[s], top_w[s])

            with torch.inference_mode(), autocast(ctx.device):
                ref = experts.mix(experts.hidden(pair), weights[0]).float()
                diff = max((dense().float() - ref).abs().max().item(), (gathered().float() - ref).abs().max().item())
                scale = ref.abs().max().item()
            cases = {"dense": under_inference(dense, ctx.device), "gathered": under_inference(gathered, ctx.device),
                     "dense_shared": under_inference(dense_shared, ctx.device),
                     "gathered_both": under_inference(lambda: [gathered(0), gathered(1)], ctx.device)}
            t = ctx.time(cases, ctx.cfg.moe_rounds)
            for scenario, d, gname in (("per_stream", "dense", "gathered"),
                                       ("shared", "dense_shared", "gathered_both")):
                faster = "dense" if t.median(d) <= t.median(gname) else "gathered"
                auto = experts.choose(count, ctx.device, shared=scenario == "shared")
                rows.append({
                    "scenario": scenario, "token_rows": count, "num_experts": n, "top_k": k,
                    "dense_s": t.summary(d), "gathered_s": t.summary(gname),
                    "gathered_over_dense": t.ratio(gname, d), "faster": faster, "auto_picks": auto,
                    "auto_is_faster": auto == faster, "max_abs_diff": diff,
                    "relative_diff": diff / scale if scale else 0.0, "equal_output": diff <= 1e-4 * max(1.0, scale),
                })
    return {"what": "the MoE adapter of one DynaMer layer: dense (all experts, two fused products, unselected "
                    "weighted 0) vs gathered (each token through its top-k experts only); per_stream: one stream's "
                    "pass over its rows (a skipping router's kept tokens), shared: both streams at keep ratio 1 "
                    "(dense computes the hidden activations once for both); outputs compared with the reference mix",
            "in_dim": in_dim, "out_dim": out_dim, "bottleneck": bottleneck, "merged_tokens": tokens,
            "rows": rows}
