"""Fixtures of the perf tests: small images and a DynaMer moved away from its identity start."""
import pytest
import torch

from medvtab.methods import build_model, make_config


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (6, 1, 28, 28), generator=g, dtype=torch.uint8)


@pytest.fixture
def trained_dynamer(pair):
    """``make(**options)``: a DynaMer on the tiny pair whose trainable weights have moved away from the identity
    start (so every path matters)."""
    def make(seed=0, **options):
        torch.manual_seed(seed)
        model = build_model("dynamer", make_config("dynamer", options), *pair, 3)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.05)
        return model
    return make
