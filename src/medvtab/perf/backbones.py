"""Section ``backbones``: one backbone forward, both backbones forward, and their ratio, per batch size."""
from __future__ import annotations

from medvtab.perf.context import Context, under_inference


def measure_backbones(ctx: Context) -> dict:
    g = ctx.compiled("general backbone", ctx.general)
    m = ctx.compiled("medical backbone", ctx.medical)
    rows = []
    for batch in ctx.cfg.batch_sizes:
        x = ctx.images(batch)
        cases = {"one": under_inference(lambda: g(x), ctx.device),
                 "both": under_inference(lambda: (g(x), m(x)), ctx.device)}
        t = ctx.time(cases, ctx.rounds(batch), settle=ctx.settle(batch))
        rows.append({"batch": batch, "one_s": t.summary("one"), "both_s": t.summary("both"),
                     "both_over_one": t.ratio("both", "one"),
                     "images_per_s_one": round(batch / t.median("one"), 1),
                     "images_per_s_both": round(batch / t.median("both"), 1)})
    return {"what": "one backbone forward (the general one) vs both backbones forward, each the backbone's own "
                    "forward (preprocess, embed, blocks, summary), inference mode",
            "rows": rows}
