"""What section ``moe`` compares: the dense and gathered MoE adapter give the same outputs and gradients, and
``auto`` picks the one measured faster."""
from __future__ import annotations

import pytest
import torch

from medvtab.methods.dynamer import GATHER_MIN_ROWS, SharedExperts

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_experts, top_k", [(4, 2), (8, 2), (4, 1), (5, 3)])
def test_gathered_and_dense_moe_give_the_same_output(num_experts, top_k):
    torch.manual_seed(num_experts * 10 + top_k)
    experts = SharedExperts(192, 32, 96, num_experts, top_k)
    with torch.no_grad():
        experts.up.weight.normal_(std=0.05)
        experts.up_bias.normal_(std=0.05)
    pair = torch.randn(3, 50, 192)
    top_val, top_idx = torch.randn(3, 50, num_experts).topk(top_k, dim=-1)
    top_w = top_val.softmax(-1)
    weights = torch.zeros(3, 50, num_experts).scatter(-1, top_idx, top_w)
    reference = experts.mix(experts.hidden(pair), weights)
    torch.testing.assert_close(experts.mix_folded(experts.hidden(pair), weights), reference, **TOL)
    torch.testing.assert_close(experts.gathered(pair, top_idx, top_w), reference, **TOL)
    # gradients reach the same parameters with the same values
    grads = []
    for fn in (lambda: experts.mix(experts.hidden(pair), weights), lambda: experts.gathered(pair, top_idx, top_w)):
        experts.zero_grad()
        fn().square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in experts.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_auto_moe_choice_is_dense_where_it_measured_faster():
    experts = SharedExperts(192, 32, 96, 4, 2)
    cpu = torch.device("cpu")
    assert experts.choose(10 * GATHER_MIN_ROWS, cpu, shared=True) == "dense"    # 4 experts, top-2: dense wins
    assert experts.choose(10 * GATHER_MIN_ROWS, cpu) == "dense"
    eight = SharedExperts(192, 32, 96, 8, 2)
    assert eight.choose(10 * GATHER_MIN_ROWS, cpu) == "gathered"               # one stream's pass
    assert eight.choose(10 * GATHER_MIN_ROWS, cpu, shared=True) == "dense"     # dense shares its activations
    many = SharedExperts(192, 32, 96, 16, 2)
    assert many.choose(GATHER_MIN_ROWS - 1, cpu) == "dense"                     # few tokens
    assert many.choose(10 * GATHER_MIN_ROWS, cpu) == "gathered"
    assert many.choose(10 * GATHER_MIN_ROWS, cpu, shared=True) == "gathered"
    assert many.choose(10 * GATHER_MIN_ROWS, torch.device("cuda")) == "dense"   # no host sync on a GPU
    assert SharedExperts(192, 8, 96, 16, 2).choose(10 * GATHER_MIN_ROWS, cpu) == "dense"  # narrow experts
    many.impl = "dense"
    assert many.choose(10 * GATHER_MIN_ROWS, cpu) == "dense"
