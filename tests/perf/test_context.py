"""A perf run's settings and context: profiles, the tiny pair on the CPU, one record of the machine."""
from __future__ import annotations

import pytest
import torch

from medvtab.errors import MedvtabError
from medvtab.perf.context import PerfConfig, machine_record, make_context


def test_profiles_and_overrides():
    quick = PerfConfig.for_profile("cpu", quick=True, rounds=5, train_batch=None)
    assert quick.profile == "quick" and quick.batch_sizes == (2,) and quick.rounds == 5 and quick.train_batch == 4
    assert PerfConfig.for_profile("cuda", quick=False).profile == "gpu"
    assert PerfConfig.for_profile("cpu", quick=False) == PerfConfig()


def test_context_of_the_tiny_pair():
    ctx = make_context(PerfConfig.for_profile("cpu", quick=True, clock="wall"))
    assert ctx.image_size == 28 and ctx.clock == "wall"
    assert ctx.images(3).shape == (3, 3, 28, 28) and ctx.images(3).dtype == torch.uint8
    assert ctx.labels(4).tolist() == [0, 1, 0, 1]
    record = machine_record(ctx)
    assert record["device"] == "cpu" and record["dtype"] == "float32"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is missing")
def test_missing_cuda_is_an_error_for_users():
    with pytest.raises(MedvtabError, match="--device"):
        make_context(PerfConfig(device="cuda"))
