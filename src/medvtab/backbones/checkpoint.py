"""Reading weight files safely and loading them strictly.

Only safetensors and ``torch.load(weights_only=True)`` are used, so a checkpoint can never run code.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from medvtab.errors import MedvtabError, first_line

_CONTAINER_KEYS = ("state_dict", "model", "module")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a .safetensors, .pth, .pt or .bin file into a flat ``{key: tensor}`` dict."""
    path = Path(path)
    if not path.is_file():
        raise MedvtabError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's message advises weights_only=False; medvtab never does that, so say why it stops instead.
        raise MedvtabError(f"{path}: refused to load: not a plain-tensor checkpoint (corrupt, or it holds "
                           f"Python objects, which medvtab never unpickles)") from None
    except Exception as err:  # noqa: BLE001 - any failure to parse is the file's fault, reported in one line
        raise MedvtabError(f"{path}: not a readable checkpoint ({first_line(err)})") from None
    # Training checkpoints often wrap the weights: {"model": {...}} or {"state_dict": {...}}.
    while isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in _CONTAINER_KEYS:
        obj = next(iter(obj.values()))
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MedvtabError(f"{path}: expected a dict of tensors (a state dict), got {type(obj).__name__}")
    return dict(obj)


def _preview(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``model``; any missing, unexpected or wrongly shaped key is an error, and so is a
    non-floating tensor where the model has floating weights (load_state_dict would cast it silently) or a
    NaN / infinite weight (it would surface much later as a "non-finite training loss")."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_preview(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes: {_preview(wrong, 3)}")
    if problems:
        raise MedvtabError(f"{source}: checkpoint does not match the architecture; " + "; ".join(problems))
    for key, value in expected.items():
        given = state_dict[key]
        if value.is_floating_point() and not given.is_floating_point():
            raise MedvtabError(f"{source}: key '{key}' has dtype {str(given.dtype).removeprefix('torch.')}; expected "
                               f"floating-point weights (float32, float16 or bfloat16)")
        if given.is_floating_point() and not torch.isfinite(given).all():
            raise MedvtabError(f"{source}: key '{key}' holds NaN or infinite values; the checkpoint is corrupt")
    model.load_state_dict(state_dict, strict=True)
