"""Attention maps of a DynaMer run rebuilt from its run directory: the maps themselves (block skipping included),
attention probabilities that reproduce the ViT and SAM blocks, and backbones that changed since the run."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from timm.models.vision_transformer_sam import VisionTransformerSAM

from medvtab.backbones import load_backbone
from medvtab.backbones.sam import SamBackbone
from medvtab.bench.report.attention import attention_probs, patch_map, run_attention
from medvtab.bench.store import RunSpec, run_dir
from medvtab.errors import MedvtabError


def test_attention_maps_of_a_dynamer_run(bench_store):
    grid = json.loads((bench_store / "bench.json").read_text())
    spec = next(RunSpec(**s) for s in grid["specs"] if s["method"] == "dynamer" and s["group"] == "main")
    maps = run_attention(run_dir(bench_store, spec), count=4)
    assert maps.images.shape == (4, 28, 28, 3) or maps.images.shape[:3] == (4, 28, 28)
    for stream in ("general", "medical"):
        m = maps.maps[stream]
        assert m.shape == (4, 7, 7) and np.isfinite(m).all() and (m >= 0).all()
        assert (m.reshape(4, -1).sum(1) <= 1 + 1e-5).all()  # CLS attention over patches: part of a softmax
        assert maps.kinds[stream] == "CLS-to-patch attention"
    assert sorted(maps.labels) == [0, 1, 2, 3]  # one image of each class first (retinamnist: 5 grades)
    # later-blocks skipping: the last block saw the CLS and ceil(0.5 * 49) = 25 patches; the others have no attention
    skip = next(RunSpec(**s) for s in grid["specs"] if s["options"].get("skip_mode") == "later-blocks"
                and s["options"].get("keep_ratio") == 0.5)
    skipped = run_attention(run_dir(bench_store, skip), count=2)
    for stream in ("general", "medical"):
        assert (np.isnan(skipped.maps[stream]).reshape(2, -1).sum(1) == 49 - 25).all()


def _reconstruct(attn, probs, tokens_normed):
    """The attention module's output from our probabilities and its own value projection."""
    b, n, c = tokens_normed.shape
    heads = attn.num_heads
    v = attn.qkv(tokens_normed).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)[2]
    return attn.proj((probs @ v).transpose(1, 2).reshape(b, n, -1))


def test_vit_attention_probs_reproduce_the_block():
    backbone = load_backbone("tiny-general")
    torch.manual_seed(0)
    tokens = backbone.embed(backbone.preprocess(torch.randint(0, 255, (2, 3, 28, 28), dtype=torch.uint8)))
    blk = backbone.model.blocks[3]
    with torch.no_grad():
        probs, seq = attention_probs(backbone, 3, tokens)
        assert probs.shape == (2, 3, 50, 50) and torch.allclose(probs.sum(-1), torch.ones(2, 3, 50))
        expected = blk.attn(blk.norm1(tokens))
        assert torch.allclose(_reconstruct(blk.attn, probs, blk.norm1(seq)), expected, atol=1e-5)
        keep = torch.tensor([[0, 5, 9], [1, 2, 48]])
        probs, seq = attention_probs(backbone, 3, tokens, keep)
        assert probs.shape == (2, 3, 4, 4) and torch.equal(seq[:, 1:], tokens[torch.arange(2)[:, None], keep + 1])


def test_sam_attention_probs_reproduce_the_block():
    torch.manual_seed(0)
    model = VisionTransformerSAM(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, use_rel_pos=True,
                                 window_size=2, global_attn_indexes=(1,), num_classes=0, neck_chans=16)
    for name, p in model.named_parameters():
        if "rel_pos" in name:
            torch.nn.init.normal_(p, std=0.5)  # zeros at init would hide a wrong bias
    backbone = SamBackbone(model, spec="tiny-sam", input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, random_init=True)
    tokens = backbone.embed(backbone.preprocess(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)))
    blk = model.blocks[1]
    with torch.no_grad():
        probs, seq = attention_probs(backbone, 1, tokens)
        expected = blk.attn(blk.norm1(tokens.view(2, 4, 4, -1))).flatten(1, 2)
        assert torch.allclose(_reconstruct(blk.attn, probs, blk.norm1(seq)), expected, atol=1e-5)
        grid, kind = patch_map(backbone, probs, None)
        assert grid.shape == (2, 4, 4) and kind.startswith("mean attention received")
        with pytest.raises(MedvtabError, match="windowed"):
            attention_probs(backbone, 0, tokens)


def test_attention_refuses_backbones_that_changed_since_the_run(bench_store, tmp_path):
    grid = json.loads((bench_store / "bench.json").read_text())
    spec = next(RunSpec(**s) for s in grid["specs"] if s["method"] == "dynamer" and s["group"] == "main")
    run = tmp_path / "run"
    shutil.copytree(run_dir(bench_store, spec), run)
    config = json.loads((run / "config.json").read_text())
    config["backbones"][0]["random_init"] = not config["backbones"][0]["random_init"]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(MedvtabError, match="cannot be rebuilt faithfully"):
        run_attention(run)
