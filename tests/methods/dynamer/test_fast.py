"""The fast layer production runs against the paper's layer (``set_fast(False)``): the same logits, auxiliary
loss and gradients, and the work it skips.

Tolerance: the fast path computes the same sums in other orders (weights folded into the experts' products, padded
router products, the top-2 softmax as a sigmoid), so float32 results agree to rounding: logits and losses within
rtol = atol = 1e-5, gradients within rtol 1e-4, atol 1e-6.
"""
import itertools
import math

import pytest
import torch

from medvtab.backbones.base import gather_tokens
from medvtab.methods.dual_stream import StepHints

TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-6)
# Without skipping (keep ratio 1: the skip mode then changes nothing), and each skip mode at two keep ratios.
SKIPPING = [("adapter", 1.0)] + list(itertools.product(("adapter", "later-blocks", "block"), (0.5, 0.3)))


def logits(model, images, fast: bool, moe: str = "auto", mode=torch.no_grad):
    model.set_fast(fast)
    model.set_moe_impl(moe)
    with mode():
        return model(images).clone()


@pytest.mark.parametrize("skip_mode, keep_ratio", SKIPPING)
def test_fast_and_paper_logits_agree_in_evaluation(dynamer, images, skip_mode, keep_ratio):
    model = dynamer(keep_ratio=keep_ratio, skip_mode=skip_mode, moved=True).eval()
    paper = logits(model, images, fast=False)
    assert paper.abs().max() > 0.01
    for mode in (torch.no_grad, torch.inference_mode):  # inference mode writes stream tensors in place
        torch.testing.assert_close(logits(model, images, True, mode=mode), paper, **TOL)
    for moe in ("dense", "gathered"):
        torch.testing.assert_close(logits(model, images, True, moe=moe), paper, **TOL)


@pytest.mark.parametrize("skip_mode, keep_ratio", SKIPPING)
@pytest.mark.parametrize("preset", ["paper", "lite"])
def test_fast_and_paper_agree_in_training(dynamer, images, skip_mode, keep_ratio, preset):
    """The paper's configuration (shared router, width gates, no auxiliary loss) and the lite one (a router per
    stream, one-value gates, the load-balancing loss)."""
    labels = torch.tensor([0, 1, 2, 0])
    runs = {}
    for fast in (False, True):
        model = dynamer(keep_ratio=keep_ratio, skip_mode=skip_mode, preset=preset, moved=True).train()
        model.set_fast(fast)
        out = model(images)
        aux = model.auxiliary_loss()
        assert (aux is None) == (preset == "paper")
        aux = torch.zeros(()) if aux is None else aux
        (torch.nn.functional.cross_entropy(out, labels) + aux).backward()
        runs[fast] = (out.detach(), aux.detach(),
                      {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (paper_out, paper_aux, paper_grads), (out, aux, grads) = runs[False], runs[True]
    torch.testing.assert_close(out, paper_out, **TOL)
    torch.testing.assert_close(aux, paper_aux, **TOL)
    assert set(grads) == set(paper_grads)
    for name, g in paper_grads.items():
        torch.testing.assert_close(grads[name], g, **GRAD_TOL, msg=name)


@pytest.mark.parametrize("options", [{"gate_dim": "1"}, {"gate_dim": "width/4", "keep_ratio": 0.5},
                                     {"gates": "general", "keep_ratio": 0.3, "skip_mode": "later-blocks"},
                                     {"gates": "none", "keep_ratio": 0.5, "top_k": 3}, {"preset": "lite"},
                                     {"router": "per-stream", "keep_ratio": 0.3}, {"gated_layers": "0,2"}])
def test_fast_and_paper_logits_agree_for_every_gate_shape(dynamer, images, options):
    """A one-value gate folds into the expert weights on the fast path (with a router per stream, into its first
    product); wider gates multiply the change; the shared router serves both streams."""
    model = dynamer(moved=True, **options).eval()
    paper = logits(model, images, fast=False)
    for moe in ("dense", "gathered"):
        torch.testing.assert_close(logits(model, images, True, moe=moe, mode=torch.inference_mode), paper, **TOL)


@pytest.mark.parametrize("options", [{}, {"keep_ratio": 0.5, "skip_mode": "later-blocks"}, {"keep_ratio": 0.3},
                                     {"keep_ratio": 0.3, "skip_mode": "block"}, {"preset": "lite"}])
def test_fast_and_paper_logits_agree_on_vitb_layouts(dynamer, vitb_pair, options):
    """DINOv2's CLS does not merge (its summary never sees the last layer); LVM-Med's mean-pooled summary reads
    every token."""
    model = dynamer(backbones=vitb_pair, moved=True, **options).eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    paper = logits(model, images, fast=False)
    torch.testing.assert_close(logits(model, images, True, mode=torch.inference_mode), paper, **TOL)
    torch.testing.assert_close(logits(model, images, True, moe="gathered"), paper, **TOL)


@pytest.mark.parametrize("keep_ratio", [0.1, 0.5, 1.0])
def test_experts_run_once_for_both_streams_where_that_is_fewer_rows(dynamer, images, keep_ratio):
    """One shared pass over all token pairs where both streams' kept rows are at least as many, else one pass per
    stream over its kept rows."""
    model = dynamer(keep_ratio=keep_ratio)
    n, expected = 49, math.ceil(keep_ratio * 49) + 1
    down = []
    hooks = [layer.experts.down.register_forward_hook(lambda m, i, o: down.append(i[0].shape[1]))
             for layer in model.runner.hooks.values()]
    model(images)
    for h in hooks:
        h.remove()
    assert down == ([n + 1] * 4 if 2 * expected >= n + 1 else [expected] * 8)


def test_last_layer_adapts_only_what_the_head_reads(dynamer, images):
    """After the last block only the CLS tokens reach the head (both streams have one, and it merges): in
    evaluation the last layer adapts those alone; with statistics recording it still routes every token."""
    model = dynamer(keep_ratio=0.5, skip_mode="later-blocks").eval()
    seen = []
    handle = model.runner.hooks["3"].experts.down.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    with torch.no_grad():
        model(images)
        assert seen == [1, 1]  # one pass per stream, the CLS pair only
        seen.clear()
        model.set_record_stats(True)
        model(images)
        model.set_record_stats(False)
        assert seen == [50]  # every token pair: one pass serves both streams' kept rows (2 x 26 >= 50)
    handle.remove()


def test_later_blocks_mode_hands_the_adapted_rows_to_the_next_block(dynamer, pair, images):
    """With ``carry`` a ``later-blocks``-mode layer returns the next block's input rows instead of writing them into
    the stream tensors: the same values the plain call writes there."""
    model = dynamer(keep_ratio=0.3, skip_mode="later-blocks", moved=True).eval()
    layer = model.runner.hooks["0"]
    with torch.no_grad():
        xg, xm = model.runner.embed(images)
        plain_g, plain_m, plain = layer(xg, xm)
        _, _, handed = layer(xg, xm, hints=StepHints(carry=True))
    assert plain.rows == (None, None)
    for backbone, tokens, keep, rows in zip(pair, (plain_g, plain_m), handed.keep, handed.rows):
        assert rows.shape == (4, 1 + math.ceil(0.3 * 49), 96)
        torch.testing.assert_close(rows, gather_tokens(tokens, backbone.block_rows(keep)), rtol=0, atol=0)
