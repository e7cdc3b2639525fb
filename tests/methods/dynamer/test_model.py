"""The DynaMer model: parameters, checkpoints, statistics, training, and the ViT-B layouts."""
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from medvtab.backbones import random_init
from medvtab.methods import count_parameters
from medvtab.perf.vitb import meta_model


def test_checkpoint_round_trip_gives_identical_logits(dynamer, images, tmp_path):
    model = dynamer(keep_ratio=0.5, seed=1, moved=True).eval()
    save_file(model.trainable_state_dict(), tmp_path / "adapter.safetensors")
    again = dynamer(keep_ratio=0.5, seed=2).eval()
    with torch.no_grad():
        assert not torch.equal(model(images), again(images))
        again.load_trainable_state_dict(load_file(tmp_path / "adapter.safetensors"), "test")
        torch.testing.assert_close(model(images), again(images), rtol=0, atol=0)


def test_trainable_parameter_count_matches_closed_form(dynamer):
    d, n, depth, classes = 96, 4, 4, 3
    for options, gate_dim, skip, routers in [
            ({}, d, False, 1), ({"gate_dim": "width/4", "keep_ratio": 0.5}, d // 4, True, 1),
            ({"gates": "general", "router": "per-stream"}, d, False, 2), ({"preset": "lite"}, 1, False, 2),
            ({"bottleneck": 32, "router_hidden": 16, "keep_ratio": 0.3, "gate_dim": "1"}, 1, True, 1),
            ({"gated_layers": "last:1"}, d, False, 1)]:
        r, h = options.get("bottleneck", 8), options.get("router_hidden", 8)  # 8: MIN_HIDDEN on width 96
        gated_streams = 1 if options.get("gates") == "general" else 2
        gated_layers = 1 if "gated_layers" in options else depth
        experts = (2 * d * n * r + n * r) + n * r * d + n * d
        router = d * h + h + h * n + n
        skip_router = d * h + h + h * h + h
        per_layer = experts + routers * router + (2 * skip_router if skip else 0)
        gates = gated_layers * gated_streams * (d * gate_dim + gate_dim)
        expected = depth * per_layer + gates + (2 * d) * classes + classes
        assert count_parameters(dynamer(**options), trainable=True) == expected, options


def test_routing_statistics_are_recorded_in_evaluation(dynamer, images):
    model = dynamer(keep_ratio=0.5).eval()
    model.set_record_stats(True)
    with torch.no_grad():
        model(images)
    stats = model.routing_stats()
    assert sorted(stats) == ["0", "1", "2", "3"]
    for layer in stats.values():
        for stream in ("general", "medical"):
            assert sum(layer[stream]["expert_usage"]) == pytest.approx(1.0, abs=1e-3)
            assert 0 < layer[stream]["mean_gate"] < 1
            assert layer[stream]["kept_fraction"] == pytest.approx((math.ceil(0.5 * 49) + 1) / 50, abs=1e-4)
    model.reset_routing_stats()
    assert all(layer.stats.sum() == 0 for layer in model.runner.hooks.values())


@pytest.mark.parametrize("options", [{}, {"keep_ratio": 0.5, "skip_mode": "later-blocks"},
                                     {"keep_ratio": 0.5, "skip_mode": "block"}])
def test_dynamer_forward_and_backward_on_dinov2_and_lvmmed(dynamer, vitb_pair, options):
    general, medical = vitb_pair
    assert general.grid == medical.grid == (14, 14)
    model = dynamer(num_classes=2, backbones=vitb_pair, **options).train()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    logits = model(images)
    assert logits.shape == (2, 2)
    logits.sum().backward()
    layer = model.runner.hooks["0"]
    assert layer.merges_cls is False and layer.starts == [1, 0]  # DINOv2's CLS stays in its stream
    assert layer.experts.down.weight.grad.abs().sum() > 0


def test_a_training_step_changes_only_trainable_parameters(dynamer, images):
    model = dynamer(keep_ratio=0.5).train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    loss = torch.nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    params = dict(model.named_parameters())
    assert frozen and all(torch.equal(params[n], v) for n, v in frozen.items())
    changed = [n for n, v in trainable.items() if not torch.equal(params[n], v)]
    assert "head.weight" in changed and any("experts" in n for n in changed) and any("gate" in n for n in changed)


@pytest.mark.parametrize("options, ratio", [({}, 1.21), ({"preset": "lite"}, 1.097)])
def test_the_default_is_the_papers_size_on_the_vitb_layouts(options, ratio):
    """DINOv2-B + LVM-Med layouts on meta tensors (shapes only): the paper's 1.21X as "Total Params" counts it,
    (one backbone + everything DynaMer adds) / one backbone (``medvtab methods`` shows the same)."""
    general, medical = (random_init.build(layout, device="meta") for layout in ("dinov2-vitb14", "lvmmed-vitb"))
    one = count_parameters(general, trainable=False)
    added = count_parameters(meta_model(options, general, medical), trainable=True)
    assert (one + added) / one == pytest.approx(ratio, abs=0.005)
