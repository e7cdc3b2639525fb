"""``random:NAME`` backbone specs: real layouts from random weights, accepted wherever a spec is."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from medvtab.backbones import load_backbone
from medvtab.backbones.random_init import build
from medvtab.cli import app
from medvtab.errors import MedvtabError


def test_random_specs_load_in_their_real_layout():
    backbone = load_backbone("random:dinov2-vitb14")
    assert backbone.grid == (14, 14) and backbone.width == 768 and backbone.random_init
    with pytest.raises(MedvtabError, match="random:lvmmed-vitb"):
        load_backbone("random:resnet50")
    with pytest.raises(MedvtabError, match="no weights file"):
        load_backbone("random:lvmmed-vitb@weights.pth")


def test_random_weights_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build("dinov2-vits14", depth=1)
    assert torch.rand(1) == before
    b = build("dinov2-vits14", depth=1)
    assert a.info.depth == 1 and a.input_size == 196
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(p, q), name


def test_inspect_accepts_the_random_vitb_pair():
    result = CliRunner().invoke(app, ["inspect", "--general", "random:dinov2-vitb14", "--medical", "random:lvmmed-vitb"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["aligned"] and report["general"]["grid"] == report["medical"]["grid"] == "14x14"
    assert report["general"]["random_init"] and report["medical"]["spec"] == "random:lvmmed-vitb"
