"""Real checkpoint key layouts (DINOv2 timm + Meta hub, LVM-Med/SAM, BiomedCLIP open_clip), loaded strictly.

Every checkpoint is built here from timm's architecture definitions with random weights (nothing is
downloaded), in the key layout the real release uses, saved to a temporary file and loaded through
``load_backbone``. Fast tests use depth-reduced ViT-Bs; the ``slow`` test builds the full 12-block layouts.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.vision_transformer_sam import get_rel_pos

from medvtab.backbones import check_alignment, load_backbone
from medvtab.backbones.sam import SamBackbone
from medvtab.errors import MedvtabError

WIDTH = 768
CLI = [sys.executable, "-m", "medvtab.cli"]


# --- building checkpoints in the real layouts ------------------------------------------------------------

def _liven(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies of ``state`` with the tensors timm initialises to constants (biases, layer scales, CLS, SAM's
    zero relative-position tables and position embedding) made random, so no bug hides behind a zero."""
    out = {}
    for key, value in state.items():
        value = value.detach().clone()
        if key.endswith(("rel_pos_h", "rel_pos_w")):
            value = torch.randn(value.shape) * 0.5
        elif key.endswith("gamma"):
            value = 0.5 + torch.rand(value.shape)
        elif key.endswith(("bias", "cls_token")):
            value = torch.randn(value.shape) * 0.1
        elif key.endswith("norm1.weight") or key.endswith("norm2.weight") or key == "norm.weight":
            value = 1.0 + 0.1 * torch.randn(value.shape)
        out[key] = value
    return out


def _timm_state(name: str, seed: int, **kwargs) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        return _liven(model.state_dict())


def _smooth_grid(h: int, w: int, freqs: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """(1, h, w, C) with channel c = 0.5 sin(2 pi (a_c v + b_c u) + phi_c) at cell centres (u, v in [0, 1])."""
    v = (torch.arange(h) + 0.5) / h
    u = (torch.arange(w) + 0.5) / w
    arg = 2 * math.pi * (freqs[:, 0] * v[:, None, None] + freqs[:, 1] * u[None, :, None]) + phase
    return (0.5 * torch.sin(arg)).unsqueeze(0)


_POS_FREQS = torch.randint(-2, 3, (WIDTH, 2), generator=torch.Generator().manual_seed(7)).float()
_POS_PHASE = torch.rand(WIDTH, generator=torch.Generator().manual_seed(8)) * 2 * math.pi


def dinov2_timm_layout(depth: int | None = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """What ``timm.create_model('vit_base_patch14_dinov2').state_dict()`` holds: positions for 518 px."""
    kwargs = {"depth": depth} if depth else {}
    state = _timm_state("vit_base_patch14_dinov2", seed, **kwargs)
    assert state["pos_embed"].shape == (1, 1370, WIDTH)
    return state


def dinov2_meta_layout(depth: int | None = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Meta's hub checkpoint (dinov2_vitb14_pretrain.pth): timm's keys plus iBOT's ``mask_token``."""
    state = dinov2_timm_layout(depth, seed)
    state["mask_token"] = torch.randn(1, WIDTH, generator=torch.Generator().manual_seed(seed + 100))
    return state


def lvmmed_layout(depth: int | None = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    """LVM-Med's ``lvmmed_vit.pth``: SAM's ImageEncoderViT keys (``mlp.lin1/lin2``, neck) at 1024 px."""
    kwargs = {"depth": depth, "global_attn_indexes": tuple(i for i in range(depth) if i % 3 == 2)} if depth else {}
    state = _timm_state("samvit_base_patch16", seed, **kwargs)
    state = {k.replace("mlp.fc", "mlp.lin"): v for k, v in state.items() if not k.startswith("head")}
    assert state["pos_embed"].shape == (1, 64, 64, WIDTH)
    state["pos_embed"] = _smooth_grid(64, 64, _POS_FREQS, _POS_PHASE)  # learned positions are smooth
    return state


def biomedclip_layout(depth: int | None = 2, seed: int = 2) -> dict[str, torch.Tensor]:
    """open_clip's BiomedCLIP checkpoint: the timm trunk under ``visual.trunk.``, a projection head, the
    PubMedBERT text tower (vocabulary cut down here) and ``logit_scale``."""
    kwargs = {"depth": depth} if depth else {}
    state = {f"visual.trunk.{k}": v for k, v in _timm_state("vit_base_patch16_224", seed, **kwargs).items()}
    g = torch.Generator().manual_seed(seed + 100)
    state["visual.head.proj.weight"] = torch.randn(512, WIDTH, generator=g)
    state["text.transformer.embeddings.word_embeddings.weight"] = torch.randn(64, WIDTH, generator=g)
    state["text.transformer.embeddings.position_embeddings.weight"] = torch.randn(16, WIDTH, generator=g)
    state["text.proj.0.weight"] = torch.randn(640, WIDTH, generator=g)
    state["text.proj.2.weight"] = torch.randn(512, 640, generator=g)
    state["logit_scale"] = torch.tensor(4.6052)
    return state


def save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


# name -> (spec name, file name, layout builder, depth, key prefix inside the file)
LAYOUTS = {
    "dinov2-timm": ("dinov2-vitb14", "dinov2_vitb14.safetensors", dinov2_timm_layout, 2, ""),
    "dinov2-meta": ("dinov2-vitb14", "dinov2_vitb14_pretrain.pth", dinov2_meta_layout, 2, ""),
    "lvmmed": ("lvmmed-vitb", "lvmmed_vit.pth", lvmmed_layout, 3, ""),
    "biomedclip": ("biomedclip-vitb16", "open_clip_pytorch_model.bin", biomedclip_layout, 2, "visual.trunk."),
}


@pytest.fixture(scope="module")
def states():
    return {name: builder(depth) for name, (_, _, builder, depth, _) in LAYOUTS.items()}


@pytest.fixture(scope="module")
def files(states, tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {name: save(states[name], root / LAYOUTS[name][1]) for name in LAYOUTS}


def load(name: str, file: Path, **kwargs):
    spec_name, _, _, depth, _ = LAYOUTS[name]
    return load_backbone(f"{spec_name}@{file}", depth=kwargs.pop("depth", depth), **kwargs)


@pytest.fixture(scope="module")
def backbones(files):
    return {name: load(name, files[name]) for name in LAYOUTS}


def _images(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)


# --- 1. DINOv2: timm layout and Meta's hub layout --------------------------------------------------------

@pytest.mark.parametrize("name", ["dinov2-timm", "dinov2-meta"])
def test_dinov2_layout_loads_at_196_px_as_a_14x14_grid(backbones, states, name):
    bb = backbones[name]
    info = bb.info
    assert (info.grid, info.input_size, info.patch_size) == ((14, 14), 196, 14)
    assert (info.depth, info.width, info.num_prefix_tokens, info.has_cls) == (2, WIDTH, 1, True)
    assert info.spec.startswith("dinov2-vitb14@") and not info.random_init
    # The checkpoint's weights, not timm's init, are in the model; positions resampled 37x37 -> 14x14.
    torch.testing.assert_close(bb.model.blocks[1].attn.qkv.weight, states[name]["blocks.1.attn.qkv.weight"],
                               rtol=0, atol=0)
    assert bb.model.pos_embed.shape == (1, 1 + 14 * 14, WIDTH)
    torch.testing.assert_close(bb.model.pos_embed[:, :1], states[name]["pos_embed"][:, :1], rtol=0, atol=0)
    with torch.no_grad():
        tokens = bb.embed(bb.preprocess(_images(196)))
    assert tokens.shape == (2, 197, WIDTH)


def test_dinov2_timm_and_meta_layouts_give_identical_outputs(backbones, states):
    assert "mask_token" in states["dinov2-meta"] and "mask_token" not in states["dinov2-timm"]
    images = _images(196)
    with torch.no_grad():
        timm_out = backbones["dinov2-timm"](images)
        meta_out = backbones["dinov2-meta"](images)
    assert timm_out.shape == (2, WIDTH)
    assert torch.equal(timm_out, meta_out)
    assert timm_out.std() > 0.1  # a real, non-degenerate summary


def test_dinov2_block_by_block_run_matches_timms_own_forward(backbones, states):
    """timm's model at 196 px holding the same (resampled) position table: the same result. The table itself
    follows Meta's rule, checked against Meta's model in test_reference_features.py."""
    with torch.random.fork_rng(devices=[]):
        ref = timm.create_model("vit_base_patch14_dinov2", pretrained=False, num_classes=0, depth=2,
                                img_size=196).eval()
    bb = backbones["dinov2-meta"]
    ref.load_state_dict({**states["dinov2-timm"], "pos_embed": bb.model.pos_embed.detach()}, strict=True)
    images = _images(196, seed=3)
    with torch.no_grad():
        expected = ref(bb.preprocess(images))
        got = bb(images)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_lvmmed_layout_loads_at_224_px_with_resized_positions(backbones, states):
    bb = backbones["lvmmed"]
    state = states["lvmmed"]
    assert isinstance(bb, SamBackbone)
    info = bb.info
    assert (info.grid, info.input_size, info.patch_size, info.architecture) == ((14, 14), 224, 16, "sam")
    assert (info.depth, info.width, info.num_prefix_tokens, info.has_cls) == (3, WIDTH, 0, False)
    model = bb.model
    # mlp.lin1/lin2 -> timm's mlp.fc1/fc2
    torch.testing.assert_close(model.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.lin2.weight"], rtol=0, atol=0)
    # pos_embed (1, 64, 64, 768) -> (1, 14, 14, 768), positions keeping their meaning (a smooth field
    # sampled at the new cell centres)
    assert model.pos_embed.shape == (1, 14, 14, WIDTH)
    expected = _smooth_grid(14, 14, _POS_FREQS, _POS_PHASE)
    torch.testing.assert_close(model.pos_embed.detach(), expected, rtol=0, atol=0.03)
    # windowed blocks (window 14) keep their 27-row tables; the global block's 127 rows shrink to 27,
    # exactly as SAM interpolates them at run time
    assert [blk.window_size for blk in model.blocks] == [14, 14, 0]
    for i in (0, 1):
        torch.testing.assert_close(model.blocks[i].attn.rel_pos_h, state[f"blocks.{i}.attn.rel_pos_h"],
                                   rtol=0, atol=0)
    assert state["blocks.2.attn.rel_pos_h"].shape == (127, 64)
    rel = torch.arange(14)[:, None] - torch.arange(14)[None, :] + 13
    for axis in ("h", "w"):
        table = getattr(model.blocks[2].attn, f"rel_pos_{axis}")
        assert table.shape == (27, 64)
        torch.testing.assert_close(table[rel], get_rel_pos(14, 14, state[f"blocks.2.attn.rel_pos_{axis}"]),
                                   rtol=1e-6, atol=1e-6)


def test_lvmmed_block_by_block_run_matches_timms_own_forward(backbones):
    bb = backbones["lvmmed"]
    images = _images(224, seed=4)
    with torch.no_grad():
        feats = bb.model.forward_features(bb.preprocess(images))  # (B, C, H, W); the neck is Identity
        pooled = feats.mean(dim=(2, 3))
        expected = F.layer_norm(pooled, pooled.shape[-1:])
        got = bb(images)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_lvmmed_accepts_sams_image_encoder_prefix(states, backbones, tmp_path):
    prefixed = {f"image_encoder.{k}": v for k, v in states["lvmmed"].items()}
    bb = load("lvmmed", save(prefixed, tmp_path / "sam_vit_b.pth"))
    images = _images(224, seed=5)
    with torch.no_grad():
        assert torch.equal(bb(images), backbones["lvmmed"](images))


# --- 3. BiomedCLIP: open_clip layout -----------------------------------------------------------------------

def test_biomedclip_layout_loads_the_trunk_only(backbones, states):
    bb = backbones["biomedclip"]
    info = bb.info
    assert (info.grid, info.input_size, info.patch_size, info.depth, info.has_cls) == ((14, 14), 224, 16, 2, True)
    assert info.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    torch.testing.assert_close(bb.model.blocks[0].attn.qkv.weight,
                               states["biomedclip"]["visual.trunk.blocks.0.attn.qkv.weight"], rtol=0, atol=0)
    with torch.random.fork_rng(devices=[]):
        ref = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, depth=2).eval()
    trunk = {k.removeprefix("visual.trunk."): v for k, v in states["biomedclip"].items()
             if k.startswith("visual.trunk.")}
    ref.load_state_dict(trunk, strict=True)
    images = _images(224, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(bb(images), ref(bb.preprocess(images)), rtol=1e-5, atol=1e-5)


def test_biomedclip_without_a_visual_trunk_is_refused(states, tmp_path):
    no_trunk = {k: v for k, v in states["biomedclip"].items() if not k.startswith("visual.trunk.")}
    assert "visual.head.proj.weight" in no_trunk and "logit_scale" in no_trunk
    path = save(no_trunk, tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(MedvtabError, match=r"visual\.trunk"):
        load("biomedclip", path)


# --- 4. strictness and unreadable files --------------------------------------------------------------------

@pytest.mark.parametrize("name", list(LAYOUTS))
def test_one_renamed_key_is_named_as_missing_and_unexpected(states, tmp_path, name):
    prefix = LAYOUTS[name][4]
    state = dict(states[name])
    state[f"{prefix}blocks.0.attn.qkvx.weight"] = state.pop(f"{prefix}blocks.0.attn.qkv.weight")
    path = save(state, tmp_path / LAYOUTS[name][1])
    with pytest.raises(MedvtabError) as err:
        load(name, path)
    message = str(err.value)
    assert re.search(r"missing keys: [^;]*\bblocks\.0\.attn\.qkv\.weight\b", message), message
    assert re.search(r"unexpected keys: [^;]*\bblocks\.0\.attn\.qkvx\.weight\b", message), message
    assert "wrong shapes" not in message
    assert "\n" not in message


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_a_wrongly_shaped_tensor_is_named(states, tmp_path, name):
    prefix = LAYOUTS[name][4]
    state = dict(states[name])
    state[f"{prefix}blocks.1.attn.proj.bias"] = torch.zeros(700)
    path = save(state, tmp_path / LAYOUTS[name][1])
    with pytest.raises(MedvtabError) as err:
        load(name, path)
    message = str(err.value)
    assert re.search(r"wrong shapes: [^;]*\bblocks\.1\.attn\.proj\.bias \(700,\) != \(768,\)", message), message
    assert "missing keys" not in message and "unexpected keys" not in message


def _write_random_bytes(path: Path) -> None:
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(9),
                                   dtype=torch.uint8).numpy().tobytes())


BAD_FILES = {
    "missing.pth": (None, "no such checkpoint file"),
    "corrupt.pth": (_write_random_bytes, None),
    "corrupt.safetensors": (_write_random_bytes, None),
    "list.pth": (lambda p: torch.save([torch.zeros(3)], p), "expected a dict of tensors"),
    "tensor.pt": (lambda p: torch.save(torch.zeros(3), p), "expected a dict of tensors"),
    "mixed.pth": (lambda p: torch.save({"pos_embed": torch.zeros(3), "epoch": 3}, p), "expected a dict of tensors"),
    "wrapped.pth": (lambda p: torch.save({"model": {"epoch": 3}}, p), "expected a dict of tensors"),
}


@pytest.mark.parametrize("spec_name", ["dinov2-vitb14", "lvmmed-vitb", "biomedclip-vitb16"])
@pytest.mark.parametrize("filename", list(BAD_FILES))
def test_unreadable_files_give_one_line_errors_with_the_path(tmp_path, filename, spec_name):
    write, expected = BAD_FILES[filename]
    path = tmp_path / filename
    if write is not None:
        write(path)
    with pytest.raises(MedvtabError) as err:
        load_backbone(f"{spec_name}@{path}", depth=1)
    message = str(err.value)
    assert str(path) in message
    assert "\n" not in message
    if expected:
        assert expected in message


def test_training_checkpoint_wrappers_are_unwrapped(states, backbones, tmp_path):
    path = save({"model": states["dinov2-meta"]}, tmp_path / "checkpoint.pth")
    bb = load("dinov2-meta", path)
    images = _images(196, seed=10)
    with torch.no_grad():
        assert torch.equal(bb(images), backbones["dinov2-meta"](images))


# --- 5. a checkpoint can never run code ---------------------------------------------------------------------

class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _torch_pickle(path: Path, marker: Path) -> None:
    torch.save({"pos_embed": torch.zeros(1, 1370, WIDTH), "payload": _Payload(marker)}, path)


def _plain_pickle(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump({"payload": _Payload(marker)}, f)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer, filename", [(_torch_pickle, "evil.pth"), (_plain_pickle, "evil.pth"),
                                              (_torch_pickle, "pytorch_model.bin")])
def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, writer, filename):
    # The payload is live: an unrestricted load of the same kind of file runs it.
    control, control_marker = tmp_path / "control.pth", tmp_path / "control-ran"
    writer(control, control_marker)
    with contextlib.suppress(Exception):  # a plain pickle runs, then fails torch's format check
        torch.load(control, weights_only=False)
    assert control_marker.exists()

    path, marker = tmp_path / filename, tmp_path / "payload-ran"
    writer(path, marker)
    with pytest.raises(MedvtabError) as err:
        load_backbone(f"dinov2-vitb14@{path}", depth=1)
    assert str(path) in str(err.value)
    assert not marker.exists()


# --- 6. token alignment -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dinov2_depth3_file(tmp_path_factory):
    return save(dinov2_timm_layout(depth=3), tmp_path_factory.mktemp("dinov2_d3") / "dinov2.safetensors")


def test_dinov2_and_lvmmed_align_on_14x14_grids_without_merging_cls(dinov2_depth3_file, backbones):
    general = load_backbone(f"dinov2-vitb14@{dinov2_depth3_file}", depth=3)
    alignment = check_alignment(general.info, backbones["lvmmed"].info)
    assert alignment.aligned, alignment.reason
    assert "14x14" in alignment.reason
    assert not alignment.merges_cls
    assert alignment.merged_tokens == 196
    alignment.require()


def test_tiny_pair_aligns_and_merges_cls():
    alignment = check_alignment(load_backbone("tiny-general").info, load_backbone("tiny-medical").info)
    assert alignment.aligned and alignment.merges_cls
    assert alignment.merged_tokens == 7 * 7 + 1


def test_dinov2_at_224_px_does_not_align_with_lvmmed(dinov2_depth3_file, backbones):
    general = load_backbone(f"dinov2-vitb14@{dinov2_depth3_file}", img_size=224, depth=3)
    assert general.info.grid == (16, 16)
    alignment = check_alignment(general.info, backbones["lvmmed"].info)
    assert not alignment.aligned
    assert "16x16" in alignment.reason and "14x14" in alignment.reason
    with pytest.raises(MedvtabError, match="do not align"):
        alignment.require()


def test_different_depths_do_not_align(backbones):
    alignment = check_alignment(backbones["dinov2-meta"].info, backbones["lvmmed"].info)  # 2 vs 3 blocks
    assert not alignment.aligned
    assert "depths differ" in alignment.reason


# --- 7. subset execution -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sam_backbones(backbones, files):
    """LVM-Med at 224 px (14x14: one window), 448 px (28x28: 2x2 windows) and 256 px (16x16: windows padded)."""
    out = {224: backbones["lvmmed"]}
    for size in (448, 256):
        out[size] = load("lvmmed", files["lvmmed"], img_size=size)
    return out


def _tokens(n: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(2, n, width, generator=torch.Generator().manual_seed(seed))


def _permutations(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g) for _ in range(2)])


@pytest.mark.parametrize("size, grid", [(224, 14), (448, 28), (256, 16)])
@pytest.mark.parametrize("block", [0, 2], ids=["windowed", "global"])
def test_sam_subset_of_all_tokens_in_any_order_equals_the_block(sam_backbones, size, grid, block):
    bb = sam_backbones[size]
    assert bb.grid == (grid, grid)
    blk = bb.model.blocks[block]
    assert blk.window_size == (14 if block == 0 else 0)
    assert blk.attn.rel_pos_h.shape[0] == (27 if block == 0 else 2 * grid - 1)
    assert blk.attn.rel_pos_h.abs().mean() > 0.1 and blk.attn.rel_pos_w.abs().mean() > 0.1
    n = grid * grid
    tokens = _tokens(n, WIDTH, seed=size + block)
    keep = _permutations(n, seed=size * 10 + block)
    with torch.no_grad():
        expected = bb.block(block, tokens)
        got = bb.run_block(block, tokens, keep)
    assert (expected - tokens).abs().max() > 0.1  # the block does change the tokens
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size, grid", [(448, 28), (256, 16)])
def test_sam_windowed_subset_of_whole_windows_equals_the_block_there(sam_backbones, size, grid):
    """Windows are independent: running only windows 0 and 3 gives the full block's output there."""
    bb = sam_backbones[size]
    rows, cols = bb.positions[:, 0], bb.positions[:, 1]
    chosen = torch.nonzero(((rows < 14) & (cols < 14)) | ((rows >= 14) & (cols >= 14))).flatten()
    others = torch.ones(grid * grid, dtype=torch.bool)
    others[chosen] = False
    g = torch.Generator().manual_seed(size)
    keep = torch.stack([chosen[torch.randperm(len(chosen), generator=g)] for _ in range(2)])
    tokens = _tokens(grid * grid, WIDTH, seed=size + 1)
    with torch.no_grad():
        expected = bb.block(0, tokens)
        got = bb.run_block(0, tokens, keep)
    torch.testing.assert_close(got[:, chosen], expected[:, chosen], rtol=1e-5, atol=1e-5)
    assert torch.equal(got[:, others], tokens[:, others])


@pytest.fixture(scope="module")
def vit_backbones(backbones):
    return {"tiny-general": load_backbone("tiny-general"), "dinov2": backbones["dinov2-meta"]}


@pytest.mark.parametrize("name", ["tiny-general", "dinov2"])
def test_vit_subset_runs_the_block_on_prefix_plus_kept_tokens_only(vit_backbones, name):
    bb = vit_backbones[name]
    p, n = bb.num_prefix_tokens, bb.info.num_patches
    tokens = _tokens(p + n, bb.width, seed=11)
    keep = _permutations(n, seed=12)[:, : n // 3]
    with torch.no_grad():
        got = bb.run_block(1, tokens, keep)
        reference = []
        for b in range(2):
            subset = torch.cat([tokens[b, :p], tokens[b, p + keep[b]]]).unsqueeze(0)
            reference.append(bb.model.blocks[1](subset)[0])
    for b in range(2):
        dropped = torch.ones(n, dtype=torch.bool)
        dropped[keep[b]] = False
        assert torch.equal(got[b, p:][dropped], tokens[b, p:][dropped])  # exactly untouched
        torch.testing.assert_close(got[b, p + keep[b]], reference[b][p:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[b, :p], reference[b][:p], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got[b, p + keep[b]], tokens[b, p + keep[b]])
    assert not torch.allclose(got[:, :p], tokens[:, :p])  # the CLS token went through the block


@pytest.mark.parametrize("name", ["tiny-general", "dinov2"])
def test_vit_subset_of_all_tokens_in_any_order_equals_the_block(vit_backbones, name):
    bb = vit_backbones[name]
    p, n = bb.num_prefix_tokens, bb.info.num_patches
    tokens = _tokens(p + n, bb.width, seed=13)
    keep = _permutations(n, seed=14)
    with torch.no_grad():
        torch.testing.assert_close(bb.run_block(0, tokens, keep), bb.block(0, tokens), rtol=1e-5, atol=1e-5)


# --- timm:NAME@FILE with a model timm builds with dynamic image size -----------------------------------------

def test_timm_model_with_dynamic_img_size_runs_at_its_fixed_size(tmp_path):
    state = _timm_state("test_vit", seed=3)
    path = save(state, tmp_path / "test_vit.safetensors")
    bb = load_backbone(f"timm:test_vit@{path}")
    with torch.random.fork_rng(devices=[]):
        ref = timm.create_model("test_vit", pretrained=False, num_classes=0).eval()
    assert ref.dynamic_img_size  # the case under test
    ref.load_state_dict(state, strict=True)
    images = _images(bb.input_size, seed=15)
    with torch.no_grad():
        tokens = bb.embed(bb.preprocess(images))
        assert tokens.shape == (2, bb.info.num_tokens, bb.width)
        torch.testing.assert_close(bb(images), ref(bb.preprocess(images)), rtol=1e-5, atol=1e-5)


def test_timm_names_with_a_pretrained_tag_use_the_tags_config(tmp_path):
    """``timm:ARCH.TAG@FILE``: the tag's input size and normalisation, the file's weights (timm's names as
    ``timm.create_model`` takes them)."""
    state = _timm_state("test_vit", seed=4)
    path = save(state, tmp_path / "test_vit.safetensors")
    bb = load_backbone(f"timm:test_vit.r160_in1k@{path}")
    cfg = timm.models.get_pretrained_cfg("test_vit.r160_in1k")
    assert bb.input_size == cfg.input_size[-1] == 160
    with torch.random.fork_rng(devices=[]):
        ref = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=160).eval()
    ref.load_state_dict(state, strict=True)
    images = _images(160, seed=16)
    with torch.no_grad():
        torch.testing.assert_close(bb(images), ref(bb.preprocess(images)), rtol=1e-5, atol=1e-5)
    with pytest.raises(MedvtabError, match=r"no pretrained tag 'nope' for 'test_vit'; its tags: r160_in1k"):
        load_backbone(f"timm:test_vit.nope@{path}")
    with pytest.raises(MedvtabError, match="timm has no model named 'no_such_vit'"):
        load_backbone(f"timm:no_such_vit.r160_in1k@{path}")


def test_timm_hub_names_go_to_the_hub_and_say_so_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once, no retries
    with pytest.raises(MedvtabError, match=r"timm:hf-hub:timm/test_vit.r160_in1k \(hub download; offline\? "
                                           r"give the timm architecture with a local file"):
        load_backbone("timm:hf-hub:timm/test_vit.r160_in1k")
    path = save(_timm_state("test_vit", seed=4), tmp_path / "w.safetensors")
    for spec in ("timm:hf-hub:timm/test_vit.r160_in1k", f"timm:hf-hub:timm/test_vit.r160_in1k@{path}"):
        with pytest.raises(MedvtabError, match="--allow-download, or give a local file \\(timm:ARCH@FILE"):
            load_backbone(spec, allow_download=False)  # its configuration is on the hub, even with a file


# --- 9. the inspect command ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inspect_runs(tmp_path_factory):
    """Both CLI runs start at once (each pays for importing torch and timm)."""
    cwd = tmp_path_factory.mktemp("cli")
    commands = {
        "tiny": CLI + ["inspect", "--general", "tiny-general", "--medical", "tiny-medical"],
        "unknown": CLI + ["inspect", "--general", "no-such-backbone", "--medical", "tiny-medical"],
    }
    procs = {k: subprocess.Popen(c, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, c in commands.items()}
    results = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        results[key] = (proc.returncode, out, err)
    return results


def test_inspect_prints_json_for_the_tiny_pair(inspect_runs):
    code, out, err = inspect_runs["tiny"]
    assert code == 0, err
    report = json.loads(out)
    assert report["aligned"] is True
    assert report["general"]["grid"] == report["medical"]["grid"] == "7x7"
    assert report["merged_tokens_per_stream"] == 50
    assert report["general"]["random_init"] is False  # the bundled pre-trained experts
    assert report["general"]["pretrained_on"] == ["cifar10"] and report["medical"]["pretrained_on"] == ["pbc"]


def test_inspect_with_an_unknown_spec_exits_2_with_one_line(inspect_runs):
    code, out, err = inspect_runs["unknown"]
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "no-such-backbone" in lines[0]
    assert "Traceback" not in err


# --- 8. full-size layouts -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_full_vit_b_layouts_load_and_inspect_aligns_dinov2_with_lvmmed(tmp_path):
    paths = {
        "dinov2": save(dinov2_meta_layout(depth=None), tmp_path / "dinov2_vitb14_pretrain.pth"),
        "lvmmed": save(lvmmed_layout(depth=None), tmp_path / "lvmmed_vit.pth"),
        "biomedclip": save(biomedclip_layout(depth=None), tmp_path / "open_clip_pytorch_model.bin"),
    }
    specs = {"dinov2": f"dinov2-vitb14@{paths['dinov2']}", "lvmmed": f"lvmmed-vitb@{paths['lvmmed']}",
             "biomedclip": f"biomedclip-vitb16@{paths['biomedclip']}"}
    for key, spec in specs.items():
        bb = load_backbone(spec)
        info = bb.info
        assert (info.depth, info.width, info.grid) == (12, WIDTH, (14, 14)), key
        assert 80e6 < info.params < 95e6, (key, info.params)
        if key == "lvmmed":
            assert [i for i, blk in enumerate(bb.model.blocks) if blk.window_size == 0] == [2, 5, 8, 11]
        with torch.no_grad():
            assert bb(_images(info.input_size, batch=1)).shape == (1, WIDTH)
        del bb

    proc = subprocess.run(CLI + ["inspect", "--general", specs["dinov2"], "--medical", specs["lvmmed"]],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["aligned"] is True, report["reason"]
    assert report["general"]["grid"] == report["medical"]["grid"] == "14x14"
    assert report["general"]["depth"] == report["medical"]["depth"] == 12
    assert report["medical"]["has_cls"] is False
    assert report["merged_tokens_per_stream"] == 196
