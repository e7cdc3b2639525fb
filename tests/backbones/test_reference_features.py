"""Features identical to the reference implementations, on random weights saved in the real file layouts.

- LVM-Med: SAM's own ``ImageEncoderViT`` (the ``segment-anything`` package, Apache-2.0) with the LayerNorm eps
  ``build_sam`` gives it (1e-6).
- DINOv2, both layouts: Meta's ``DinoVisionTransformer`` forward written here from its source (Meta ships no
  package on PyPI that installs beside torch 2.14: the ``dinov2`` 0.0.1 upload pins torch 2.0): patch embedding,
  CLS, positions by its ``interpolate_pos_encoding`` (bicubic, scale factor ``(w0 + 0.1) / M``, no antialias),
  blocks with layer scale; at 196 px, where that rule and timm's ``resample_abs_pos_embed`` differ.
- BiomedCLIP: open_clip's own vision tower for it (``TimmModel('vit_base_patch16_224', pool='', proj='linear')``,
  as its open_clip_config.json builds it), saved as open_clip saves it (``visual.trunk.``, ``visual.head.``).

Tolerance: relative L2 difference of the final tokens <= 2e-6 in float32 (what is left is the order of
floating-point operations in two implementations of the same arithmetic).
"""
from __future__ import annotations

import math
from functools import partial

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from torch import nn

from medvtab.backbones import load_backbone

TOLERANCE = 2e-6


def relative_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def randomise(module: nn.Module, seed: int) -> None:
    """Every parameter drawn at random (zero-initialised position tables included), so no term is left out."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 1.0 if name.endswith("weight") and p.ndim == 1 else 0.02
            p.copy_(torch.randn(p.shape, generator=g) * scale + (1.0 if scale == 1.0 else 0.0))


def images(size: int, seed: int) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_lvmmed_final_tokens_equal_sams_image_encoder(tmp_path):
    modeling = pytest.importorskip("segment_anything.modeling", reason="segment-anything (the dev extra) missing")
    torch.manual_seed(0)
    sam = modeling.ImageEncoderViT(img_size=224, patch_size=16, embed_dim=768, depth=3, num_heads=12,
                                   norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=14,
                                   global_attn_indexes=(2,), out_chans=256).eval()
    randomise(sam, seed=1)
    path = tmp_path / "lvmmed_vit.safetensors"
    save_file({k: v.contiguous() for k, v in sam.state_dict().items()}, str(path))
    bb = load_backbone(f"lvmmed-vitb@{path}", depth=3)
    x = images(224, seed=2)
    with torch.no_grad():
        pixels = bb.preprocess(x)
        want = sam.patch_embed(pixels) + sam.pos_embed
        for blk in sam.blocks:
            want = blk(want)
        got = bb.run_blocks(bb.embed(pixels))
    assert relative_l2(got, want.flatten(1, 2)) <= TOLERANCE


# --- DINOv2 -------------------------------------------------------------------------------------------------

def meta_interpolate_pos_encoding(pos_embed: torch.Tensor, npatch: int, w: int, h: int, patch_size: int):
    """Meta's DinoVisionTransformer.interpolate_pos_encoding (dinov2/models/vision_transformer.py), defaults
    interpolate_offset=0.1 and interpolate_antialias=False."""
    n = pos_embed.shape[1] - 1
    if npatch == n and w == h:
        return pos_embed
    pos_embed = pos_embed.float()
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = w // patch_size, h // patch_size
    m = int(math.sqrt(n))
    sx, sy = float(w0 + 0.1) / m, float(h0 + 0.1) / m
    patch_pos_embed = F.interpolate(patch_pos_embed.reshape(1, m, m, dim).permute(0, 3, 1, 2), mode="bicubic",
                                    antialias=False, scale_factor=(sx, sy))
    assert (w0, h0) == patch_pos_embed.shape[-2:]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def meta_dinov2_tokens(state: dict, pixels: torch.Tensor, heads: int = 12) -> torch.Tensor:
    """The last block's output tokens of Meta's DINOv2 (prepare_tokens_with_masks, then its Blocks), from the
    checkpoint's tensors: LayerNorm eps 1e-6, attention with a 1 / sqrt(head dim) scale, GELU MLP, layer scale."""
    _, _, w, h = pixels.shape
    x = F.conv2d(pixels, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=14)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat((state["cls_token"].expand(x.shape[0], -1, -1), x), dim=1)
    x = x + meta_interpolate_pos_encoding(state["pos_embed"], x.shape[1] - 1, w, h, 14)
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))

    def norm(t, name):
        return F.layer_norm(t, t.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-6)

    for i in range(depth):
        p = f"blocks.{i}."
        y = norm(x, p + "norm1")
        b, n, c = y.shape
        qkv = F.linear(y, state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        y = F.linear((attn @ v).transpose(1, 2).reshape(b, n, c), state[p + "attn.proj.weight"],
                     state[p + "attn.proj.bias"])
        x = x + y * state[p + "ls1.gamma"]
        y = F.linear(norm(x, p + "norm2"), state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"])
        y = F.linear(F.gelu(y), state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"])
        x = x + y * state[p + "ls2.gamma"]
    return x


@pytest.fixture(scope="module")
def dinov2_state():
    """Random weights of a 3-block ViT-B/14 in timm's DINOv2 layout (positions for 518 px: a 37x37 table)."""
    torch.manual_seed(3)
    model = timm.create_model("vit_base_patch14_dinov2", pretrained=False, num_classes=0, depth=3)
    randomise(model, seed=4)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(5)  # learned positions are smooth: a random walk over the 37x37 grid
    grid = torch.randn(1, 37, 37, 768, generator=g).cumsum(1).cumsum(2) * 0.02
    state["pos_embed"] = torch.cat([state["pos_embed"][:, :1], grid.reshape(1, -1, 768)], 1)
    return state


@pytest.mark.parametrize("layout", ["timm", "meta"])
def test_dinov2_final_tokens_equal_metas_model_at_196_px(dinov2_state, tmp_path, layout):
    state = dict(dinov2_state)
    if layout == "meta":  # Meta's hub checkpoint also holds iBOT's mask token
        state["mask_token"] = torch.zeros(1, 768)
    path = tmp_path / f"dinov2_{layout}.safetensors"
    save_file(state, str(path))
    bb = load_backbone(f"dinov2-vitb14@{path}", depth=3)
    with torch.no_grad():
        pixels = bb.preprocess(images(196, seed=6))
        want = meta_dinov2_tokens(dinov2_state, pixels)
        got = bb.run_blocks(bb.embed(pixels))
    assert relative_l2(got, want) <= TOLERANCE


def test_metas_and_timms_position_rules_differ_at_196_px(dinov2_state):
    """Why the rule matters: timm's antialiased resample to a size, on the same table, is far from Meta's."""
    pos = dinov2_state["pos_embed"]
    meta = meta_interpolate_pos_encoding(pos, 14 * 14, 196, 196, 14)
    timm_rule = resample_abs_pos_embed(pos, new_size=(14, 14), num_prefix_tokens=1)
    assert relative_l2(timm_rule, meta) > 1e-3


# --- BiomedCLIP ---------------------------------------------------------------------------------------------

def test_biomedclip_final_tokens_equal_open_clips_vision_tower(tmp_path):
    timm_model = pytest.importorskip("open_clip.timm_model", reason="open_clip_torch (the dev extra) missing")
    torch.manual_seed(7)
    visual = timm_model.TimmModel("vit_base_patch16_224", embed_dim=512, image_size=224, pool="",
                                  proj="linear").eval()
    randomise(visual, seed=8)
    path = tmp_path / "open_clip_pytorch_model.safetensors"
    save_file({f"visual.{k}": v.contiguous() for k, v in visual.state_dict().items()}, str(path))
    bb = load_backbone(f"biomedclip-vitb16@{path}")
    with torch.no_grad():
        pixels = bb.preprocess(images(224, seed=9))
        want = visual.trunk.forward_features(pixels)  # the final tokens, after the trunk's norm
        got = bb.model.norm(bb.run_blocks(bb.embed(pixels)))
    assert relative_l2(got, want) <= TOLERANCE
