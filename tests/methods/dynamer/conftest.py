"""Fixtures of the DynaMer tests: real (tiny, and depth-reduced ViT-B-layout) backbones, a fixed image batch."""
import pytest
import torch

from medvtab.backbones import load_backbone


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (4, 1, 28, 28), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def vitb_pair(vitb_checkpoints):
    """DINOv2 (Meta's layout: CLS, not merged with LVM-Med's) and LVM-Med (SAM layout: windowed blocks, no CLS,
    mean-pooled summary), depth-reduced ViT-B checkpoints from random weights."""
    return (load_backbone(f"dinov2-vitb14@{vitb_checkpoints['dinov2']}", depth=2),
            load_backbone(f"lvmmed-vitb@{vitb_checkpoints['lvmmed']}", depth=2))
