"""Fixtures of the perf tests: small images and a DynaMer moved away from its identity start."""
import pytest
import torch


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (6, 1, 28, 28), generator=g, dtype=torch.uint8)


@pytest.fixture
def trained_dynamer(dynamer):
    """``make(seed=0, **options)``: a DynaMer on the tiny pair whose trainable weights have moved away from the
    identity start (so every path matters)."""
    return lambda seed=0, **options: dynamer(seed=seed, moved=True, **options)
