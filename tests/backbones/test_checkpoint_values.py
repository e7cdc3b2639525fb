"""A backbone checkpoint with integer weights or NaN / infinite weights is refused at load, naming the first bad
key (load_state_dict would cast integers silently, and a NaN shows up only as a failing training run)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from medvtab.backbones import load_backbone, tiny
from medvtab.errors import MedvtabError


@pytest.fixture
def weights():
    return load_file(str(tiny.bundled_weights("tiny-general")))


def test_integer_weights_are_refused(tmp_path, weights):
    path = tmp_path / "int.safetensors"
    save_file({k: v.to(torch.int32) for k, v in weights.items()}, str(path))
    with pytest.raises(MedvtabError, match=r"key '[\w.]+' has dtype int32; expected floating-point weights"):
        load_backbone(f"tiny-general@{path}")


def test_non_finite_weights_are_refused(tmp_path, weights):
    key = next(k for k in weights if k.endswith("attn.qkv.weight"))
    weights[key][0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(weights, str(path))
    with pytest.raises(MedvtabError, match=f"key '{key}' holds NaN or infinite values"):
        load_backbone(f"tiny-general@{path}")


def test_half_precision_weights_load(tmp_path, weights):
    path = tmp_path / "half.safetensors"
    save_file({k: v.half() for k, v in weights.items()}, str(path))
    assert load_backbone(f"tiny-general@{path}").spec == f"tiny-general@{path}"
