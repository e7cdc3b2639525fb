"""What section ``skip`` relies on: a block runs on a handed-over subset of rows, and routing never waits for the
host on a GPU (the skip modes' equality with the paper's layer: tests/methods/dynamer/test_fast.py)."""
from __future__ import annotations

import pytest
import torch


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
