"""SAM's image encoder (LVM-Med's ViT-B) as a Backbone.

SAM blocks work on a ``(B, H, W, C)`` grid with windowed or global attention and decomposed relative position
biases. For block skipping, :func:`sam_block_on_subset` runs the same computation on any subset of grid
positions: attention among the kept tokens only, with relative positions gathered from the same tables and a
mask that keeps windowed blocks inside their windows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from timm.models.vision_transformer_sam import VisionTransformerSAM

from medvtab.backbones.base import Backbone


class SamBackbone(Backbone):
    architecture = "sam"

    def __init__(self, model: VisionTransformerSAM, **kwargs):
        super().__init__(model, **kwargs)
        self.num_prefix_tokens = 0
        self.has_cls = False
        self.grid = tuple(model.patch_embed.grid_size)
        self.patch_size = model.patch_embed.patch_size[0]
        self.width = model.pos_embed.shape[-1]
        self.depth = len(model.blocks)
        rows, cols = torch.meshgrid(torch.arange(self.grid[0]), torch.arange(self.grid[1]), indexing="ij")
        self.register_buffer("positions", torch.stack([rows.flatten(), cols.flatten()], -1), persistent=False)

    def embed(self, pixels):
        m = self.model
        x = m.patch_embed(pixels) + m.pos_embed  # (B, H, W, C); pos_embed was resized to this grid on load
        x = m.norm_pre(x)
        return x.flatten(1, 2)

    def block(self, i, tokens, patch_index=None):
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._block, i, tokens, patch_index, use_reentrant=False)
        return self._block(i, tokens, patch_index)

    def _block(self, i, tokens, patch_index=None):
        blk = self.model.blocks[i]
        if patch_index is None:
            b, n, c = tokens.shape
            return blk(tokens.view(b, *self.grid, c)).view(b, n, c)
        return sam_block_on_subset(blk, tokens, self.positions[patch_index], self.grid)

    def summary(self, tokens):
        # SAM has no CLS token and no final norm before its (unused) neck: mean-pool, then a
        # parameter-free layer norm so the head sees features on the same scale as a ViT's normed CLS.
        pooled = tokens.mean(dim=1)
        return F.layer_norm(pooled, pooled.shape[-1:])

    def final_norm(self):
        return nn.Identity()  # nothing learnable after SAM's last block (the neck is not used)


def _relative_bias(q, table, coord, size):
    """Decomposed relative-position bias along one axis for arbitrary token positions.

    q: (B*h, K, c); table: (2*size-1, c); coord: (B, K) integer coordinates along the axis.
    Returns (B*h, K, K) with bias[i, j] = q_i . table[coord_i - coord_j + size - 1].
    """
    bh, k, _ = q.shape
    b = coord.shape[0]
    rel = coord[:, :, None] - coord[:, None, :] + (size - 1)  # (B, K, K)
    scores = q @ table.t()  # (B*h, K, 2*size-1)
    rel = rel.repeat_interleave(bh // b, dim=0)
    return scores.gather(2, rel)


def _window_padding(grid, ws):
    """Positions SAM's window partition adds (zeros, after ``norm1``) so the grid splits into whole windows."""
    hp, wp = -(-grid[0] // ws) * ws, -(-grid[1] // ws) * ws
    rows, cols = torch.meshgrid(torch.arange(hp, device="cpu"), torch.arange(wp, device="cpu"), indexing="ij")
    pad = (rows >= grid[0]) | (cols >= grid[1])
    return torch.stack([rows[pad], cols[pad]], -1)


_PADDING: dict[tuple, torch.Tensor] = {}


def window_padding(grid, ws, device) -> torch.Tensor:
    """:func:`_window_padding` on ``device``, computed once per grid, window size and device (not in every
    subset block: no host-built index per call, and no copy to the GPU on the hot path)."""
    key = (tuple(grid), ws, str(device))
    if key not in _PADDING:
        _PADDING[key] = _window_padding(grid, ws).to(device)
    return _PADDING[key]


def sam_block_on_subset(blk, tokens, positions, grid):
    """A timm SAM ``Block`` applied to the tokens at ``positions`` (B, K, 2) of a ``grid``-sized map."""
    b, k, c = tokens.shape
    attn = blk.attn
    heads = attn.num_heads
    x = blk.norm1(tokens)
    if blk.window_size > 0:
        # Edge windows of a grid the window size does not divide hold SAM's zero padding, which their
        # tokens attend to: the padding joins the subset here and is dropped after attention.
        pad = window_padding(grid, blk.window_size, positions.device)
        if len(pad):
            x = torch.cat([x, x.new_zeros(b, len(pad), c)], dim=1)
            positions = torch.cat([positions, pad.expand(b, -1, -1)], dim=1)
    n = x.shape[1]
    qkv = attn.qkv(x).view(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4).reshape(3, b * heads, n, -1)
    q, key, v = qkv.unbind(0)
    q, key = attn.q_norm(q), attn.k_norm(key)
    rows, cols = positions[..., 0], positions[..., 1]
    if blk.window_size > 0:
        ws = blk.window_size
        window = (rows // ws) * ((grid[1] + ws - 1) // ws) + cols // ws
        rows, cols, size_h, size_w = rows % ws, cols % ws, ws, ws
    else:
        window = None
        size_h, size_w = grid
    bias = None
    if attn.use_rel_pos:
        bias = (_relative_bias(q, attn.rel_pos_h, rows, size_h)
                + _relative_bias(q, attn.rel_pos_w, cols, size_w))
    if window is not None:
        outside = window[:, :, None] != window[:, None, :]
        mask = torch.zeros(outside.shape, dtype=q.dtype, device=q.device).masked_fill_(outside, float("-inf"))
        mask = mask.repeat_interleave(heads, dim=0)
        bias = mask if bias is None else bias + mask
    out = F.scaled_dot_product_attention(q, key, v, attn_mask=bias)
    out = out.view(b, heads, n, -1).transpose(1, 2).reshape(b, n, c)[:, :k]
    out = attn.proj(out)
    x = tokens + blk.drop_path1(blk.ls1(out))
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
