"""The shared experts' three forms compute one function (outputs and gradients up to float rounding: the sums run
in other orders); "auto" picks dense where that measured faster."""
import pytest
import torch

from medvtab.methods.dynamer.experts import GATHER_MIN_ROWS, SharedExperts


@pytest.mark.parametrize("num_experts, top_k", [(4, 2), (8, 3), (16, 1)])
def test_folded_and_gathered_forms_equal_the_dense_mix(num_experts, top_k):
    torch.manual_seed(0)
    experts = SharedExperts(40, 8, 24, num_experts, top_k)
    with torch.no_grad():
        experts.up.weight.normal_(std=0.1)
        experts.up_bias.normal_(std=0.1)
    pair = torch.randn(3, 7, 40)
    top_val, top_idx = torch.randn(3, 7, num_experts).topk(top_k, dim=-1)
    top_w = top_val.softmax(-1)
    weights = torch.zeros(3, 7, num_experts).scatter(-1, top_idx, top_w)
    reference = experts.mix(experts.hidden(pair), weights)
    assert reference.shape == (3, 7, 24)
    torch.testing.assert_close(experts.mix_folded(experts.hidden(pair), weights), reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(experts.gathered(pair, top_idx, top_w), reference, rtol=1e-5, atol=1e-6)
    grads = []  # the same gradients reach the same parameters
    for fn in (lambda: experts.mix(experts.hidden(pair), weights), lambda: experts.gathered(pair, top_idx, top_w)):
        experts.zero_grad()
        fn().square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in experts.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_auto_moe_choice_is_dense_where_it_measured_faster():
    cpu = torch.device("cpu")
    four = SharedExperts(192, 32, 96, 4, 2)
    assert four.choose(10 * GATHER_MIN_ROWS, cpu) == "dense"                     # few experts
    eight = SharedExperts(192, 32, 96, 8, 2)
    assert eight.choose(10 * GATHER_MIN_ROWS, cpu) == "gathered"
    assert eight.choose(10 * GATHER_MIN_ROWS, cpu, shared=True) == "dense"      # dense shares its activations
    many = SharedExperts(192, 32, 96, 16, 2)
    assert many.choose(GATHER_MIN_ROWS - 1, cpu) == "dense"                     # few tokens
    assert many.choose(10 * GATHER_MIN_ROWS, cpu) == "gathered"
    assert many.choose(10 * GATHER_MIN_ROWS, cpu, shared=True) == "gathered"
    assert many.choose(10 * GATHER_MIN_ROWS, torch.device("cuda")) == "dense"   # no host sync on a GPU
    assert SharedExperts(192, 8, 96, 16, 2).choose(10 * GATHER_MIN_ROWS, cpu) == "dense"  # narrow experts
    many.impl = "dense"
    assert many.choose(10 * GATHER_MIN_ROWS, cpu) == "dense"
