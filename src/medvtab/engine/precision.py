"""The numeric precision every medvtab model runs at: bf16 autocast on a GPU, float32 on a CPU."""
from __future__ import annotations

from contextlib import nullcontext

import torch


def autocast(device: torch.device):
    """A context for forward passes on ``device``: bf16 autocast on CUDA, nothing (float32) elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
