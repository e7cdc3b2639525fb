"""Where a trained DynaMer model looks: attention maps of the last block of the general and the medical stream
(the paper's Figure 3), computed from the blocks' own ``qkv`` projections, without touching backbone code.

The model is rebuilt from its run directory (:func:`medvtab.engine.run.load_run`) and run exactly as
:class:`medvtab.methods.dual_stream.DualStreamRunner` runs it (adapters after each block, block skipping
included) up to the input of the last block; there the attention probabilities are recomputed:

* a stream with a CLS token: the CLS query's attention over the patch tokens, averaged over heads;
* a stream without one (LVM-Med/SAM): the attention each patch receives, averaged over queries and heads.

With ``skip_mode`` ``"block"`` or ``"later-blocks"`` the last block runs on the kept tokens only; the others get no
attention (NaN).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medvtab.backbones import Backbone
from medvtab.backbones.base import gather_tokens
from medvtab.backbones.sam import _relative_bias
from medvtab.data.protocols import SPLITS_FILE, resplit
from medvtab.engine.run import load_run
from medvtab.errors import MedvtabError

CLS_KIND, MEAN_KIND = "CLS-to-patch attention", "mean attention received (no CLS token)"


@dataclass
class AttentionMaps:
    run: str
    task: str
    class_names: list[str]
    images: np.ndarray  # (N, H, W, C) uint8, the test images shown
    positions: list[int]  # their positions in the run's test split
    labels: list[int]
    predictions: list[int]
    maps: dict[str, np.ndarray]  # stream -> (N, gh, gw), NaN where the last block did not see a patch
    kinds: dict[str, str]  # stream -> what the map is (CLS_KIND or MEAN_KIND)
    specs: dict[str, str]  # stream -> backbone spec
    block: int  # the block whose attention is shown


def _vit_probs(blk, tokens: torch.Tensor) -> torch.Tensor:
    """Attention probabilities (B, heads, N, N) of a timm ``Block`` (pre-norm) on ``tokens``."""
    attn = blk.attn
    if not hasattr(blk, "norm1") or not hasattr(attn, "qkv") or getattr(attn, "qkv", None) is None:
        raise MedvtabError(f"attention maps: unsupported block type {type(blk).__name__} (no norm1 / qkv)")
    if getattr(attn, "rope", None) is not None:
        raise MedvtabError("attention maps: blocks with rotary position embeddings are not supported")
    x = blk.norm1(tokens)
    b, n, _ = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x)
    head_dim = qkv.shape[-1] // (3 * heads)
    q, k, _ = qkv.reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    scale = getattr(attn, "scale", head_dim ** -0.5)
    return ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)


def _sam_probs(backbone: Backbone, blk, tokens: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Attention probabilities (B, heads, K, K) of a global-attention SAM block among the tokens given
    (all grid positions, or those at ``keep``), with SAM's decomposed relative-position bias."""
    if blk.window_size > 0:
        raise MedvtabError(f"attention maps: the last block of '{backbone.spec}' uses windowed attention "
                           f"(window {blk.window_size}); only global-attention blocks are drawn")
    attn = blk.attn
    if getattr(attn, "rope", None) is not None:
        raise MedvtabError("attention maps: blocks with rotary position embeddings are not supported")
    b, k, c = tokens.shape
    heads = attn.num_heads
    x = blk.norm1(tokens)
    qkv = attn.qkv(x).view(b, k, 3, heads, -1).permute(2, 0, 3, 1, 4).reshape(3, b * heads, k, -1)
    q, key, _ = qkv.unbind(0)
    q, key = attn.q_norm(q), attn.k_norm(key)
    scale = getattr(attn, "scale", q.shape[-1] ** -0.5)
    scores = (q * scale) @ key.transpose(-2, -1)
    if attn.use_rel_pos:
        positions = backbone.positions.unsqueeze(0).expand(b, -1, -1) if keep is None else backbone.positions[keep]
        scores = scores + _relative_bias(q, attn.rel_pos_h, positions[..., 0], backbone.grid[0]) \
            + _relative_bias(q, attn.rel_pos_w, positions[..., 1], backbone.grid[1])
    return scores.softmax(dim=-1).view(b, heads, k, k)


def attention_probs(backbone: Backbone, i: int, tokens: torch.Tensor, keep: torch.Tensor | None = None):
    """(probabilities (B, heads, T, T) of block ``i`` on ``tokens`` -- the prefix plus all patches, or plus
    the patches at ``keep`` (B, K) --, the token sequence they refer to)."""
    p = backbone.num_prefix_tokens
    if keep is not None:
        subset = gather_tokens(tokens, keep + p)
        tokens = torch.cat([tokens[:, :p], subset], dim=1) if p else subset
    blk = backbone.model.blocks[i]
    if backbone.architecture == "sam":
        return _sam_probs(backbone, blk, tokens, keep), tokens
    return _vit_probs(blk, tokens), tokens


def patch_map(backbone: Backbone, probs: torch.Tensor, keep: torch.Tensor | None) -> tuple[torch.Tensor, str]:
    """Head-averaged attention on the patch grid, (B, gh, gw), NaN at patches not in ``keep``."""
    p = backbone.num_prefix_tokens
    mean = probs.float().mean(dim=1)  # over heads: (B, T, T)
    if backbone.has_cls:
        scores, kind = mean[:, 0, p:], CLS_KIND
    else:
        scores, kind = mean[:, :, p:].mean(dim=1), MEAN_KIND
    b = scores.shape[0]
    full = torch.full((b, backbone.grid[0] * backbone.grid[1]), float("nan"))
    if keep is None:
        full = scores.cpu()
    else:
        full.scatter_(1, keep.cpu(), scores.cpu())
    return full.view(b, *backbone.grid), kind


@torch.inference_mode()
def last_block_maps(model, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, str], torch.Tensor]:
    """Run a dual-stream model (DynaMer) to its last block exactly as its runner does and return each
    stream's attention map there, what each map is, and the model's logits."""
    runner = getattr(model, "runner", None)
    if runner is None or not hasattr(runner, "hooks"):
        raise MedvtabError("attention maps: the model is not a dual-stream (DynaMer-style) model")
    g, m = runner.general, runner.medical
    xg, xm = runner.embed(images)
    picks = None
    last = runner.depth - 1
    for i in range(last):
        xg, xm, picks = runner.step(i, xg, xm, picks)
    picks = runner.block_picks(last, xg, xm, picks)
    keep_g, keep_m = picks.keep if picks is not None else (None, None)
    maps, kinds = {}, {}
    for name, backbone, tokens, keep in (("general", g, xg, keep_g), ("medical", m, xm, keep_m)):
        probs, _ = attention_probs(backbone, last, tokens, keep)
        maps[name], kinds[name] = patch_map(backbone, probs, keep)
    return maps, kinds, model(images).float()


def check_same_backbones(model, config: dict) -> None:
    """The rebuilt backbones must be the ones the run trained on: a spec can change meaning (e.g. the tiny
    experts were random-init before pre-trained weights were bundled), and maps of other weights would lie."""
    recorded = config.get("backbones")
    runner = getattr(model, "runner", None)
    if not isinstance(recorded, list) or runner is None:
        return
    for was, backbone in zip(recorded, (runner.general, runner.medical)):
        now = vars(backbone.info)
        for key in ("random_init", "params", "width", "depth", "pretrained_on"):
            if key in was and key in now and json.dumps(was[key]) != json.dumps(now[key]):
                raise MedvtabError(f"backbone '{backbone.spec}' now loads with {key}={now[key]!r}, but the run was "
                                   f"trained on one with {key}={was[key]!r}: the run cannot be rebuilt faithfully")


def pick_images(labels: np.ndarray, count: int) -> list[int]:
    """Test positions to show: the first image of each class in turn, then the next ones, ``count`` in all."""
    chosen: list[int] = []
    classes = list(dict.fromkeys(int(c) for c in labels))
    for c in sorted(classes):
        if len(chosen) < count:
            chosen.append(int(np.flatnonzero(labels == c)[0]))
    for pos in range(len(labels)):
        if len(chosen) >= count:
            break
        if pos not in chosen:
            chosen.append(pos)
    return sorted(chosen)


def run_attention(run_dir, count: int = 4) -> AttentionMaps:
    """Attention maps of ``count`` test images of the run's own test split (rebuilt from its splits.json)."""
    run_dir = Path(run_dir)
    model, config, class_names = load_run(run_dir)
    check_same_backbones(model, config)
    try:
        record = json.loads((run_dir / SPLITS_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MedvtabError(f"{run_dir / SPLITS_FILE}: unreadable ({err})") from None
    size = max(b["input_size"] for b in config["backbones"])
    data = resplit(config["task"], record, image_size=size, data_root=config.get("data_root"))
    test = data.test
    if test.targets is not None:
        raise MedvtabError("attention maps: multi-label tasks are not drawn")
    positions = pick_images(test.labels, min(count, len(test)))
    images = test.images[positions]
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    maps, kinds, logits = last_block_maps(model, x)
    runner = model.runner
    return AttentionMaps(
        run=run_dir.name, task=str(config["task"]), class_names=[str(c) for c in class_names], images=images,
        positions=positions, labels=[int(v) for v in test.labels[positions]],
        predictions=[int(v) for v in logits.argmax(-1)],
        maps={k: v.numpy() for k, v in maps.items()}, kinds=kinds,
        specs={"general": runner.general.spec, "medical": runner.medical.spec}, block=runner.depth - 1)
