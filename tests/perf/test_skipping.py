"""What section ``skip`` measures: DynaMer's skip modes compute only what they must (token skipping in the last
layer, rows handed from layer to block, block runs on a subset) and never wait for the host on a GPU."""
from __future__ import annotations

import math

import pytest
import torch

from medvtab.backbones.base import gather_tokens


def test_last_layer_computes_only_what_the_head_reads(trained_dynamer, images):
    """After the last block only the CLS tokens reach the head (both streams have one, and it merges): in
    evaluation the last layer adapts those alone; with statistics recording it still routes every token."""
    model = trained_dynamer(keep_ratio=0.5, skip_mode="later-blocks").eval()
    seen = []
    handle = model.runner.hooks["3"].experts.down.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    with torch.no_grad():
        model(images)
        assert seen == [1, 1]  # one pass per stream, the CLS pair only
        seen.clear()
        model.set_record_stats(True)
        model(images)
        model.set_record_stats(False)
        # every token pair is routed again: one pass of the experts serves both streams' kept rows, since
        # 2 x (ceil(0.5 * 49) + 1) rows >= 50
        assert seen == [50] and 2 * (math.ceil(0.5 * 49) + 1) >= 50
        seen.clear()
        xg, xm = model.runner(images)  # the runner alone keeps every token
        # every token pair is routed again: one pass of the experts serves both streams' kept rows, since
        # 2 x (ceil(0.5 * 49) + 1) rows >= 50
        assert seen == [50] and 2 * (math.ceil(0.5 * 49) + 1) >= 50
    handle.remove()


def test_later_blocks_mode_hands_the_adapted_rows_to_the_next_block(pair, trained_dynamer, images):
    """With ``carry`` a ``later-blocks``-mode layer returns the next block's input rows instead of writing them into
    the stream tensors: the same values the plain call writes there."""
    model = trained_dynamer(keep_ratio=0.3, skip_mode="later-blocks").eval()
    layer = model.runner.hooks["0"]
    with torch.no_grad():
        xg, xm = model.runner.embed(images)
        plain_g, plain_m, plain = layer(xg, xm)
        _, _, handed = layer(xg, xm, carry=True)
    assert plain.rows == (None, None)
    for backbone, tokens, keep, rows in zip(pair, (plain_g, plain_m), handed.keep, handed.rows):
        assert rows.shape == (6, 1 + math.ceil(0.3 * 49), 96)
        torch.testing.assert_close(rows, gather_tokens(tokens, backbone.block_rows(keep)), rtol=0, atol=0)


def test_run_block_with_a_handed_over_subset_or_in_place_equals_the_plain_one(pair):
    general = pair[0]
    tokens = torch.randn(3, 50, 96, generator=torch.Generator().manual_seed(2))
    keep = torch.stack([torch.randperm(49, generator=torch.Generator().manual_seed(s))[:17].sort().values
                        for s in range(3)])
    with torch.no_grad():
        plain = general.run_block(1, tokens, keep)
        subset = torch.cat([tokens[:, :1], tokens[:, 1:][torch.arange(3)[:, None], keep]], dim=1)
        torch.testing.assert_close(general.run_block(1, tokens, keep, subset=subset), plain, rtol=0, atol=0)
        own = tokens.clone()
        out = general.run_block(1, own, keep, inplace=True)
        assert out.data_ptr() == own.data_ptr()
        torch.testing.assert_close(out, plain, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: checks that DynaMer's routing never "
                                                          "synchronises with the host (torch.cuda.set_sync_debug_mode)")
@pytest.mark.parametrize("skip_mode", ["adapter", "later-blocks", "block"])
def test_routing_does_not_synchronise_with_the_host_on_a_gpu(trained_dynamer, images, skip_mode):  # pragma: no cover
    model = trained_dynamer(keep_ratio=0.5, skip_mode=skip_mode).cuda().eval()
    x = images.cuda()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        model(x)  # warm-up: lazy initialisation may synchronise
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
