"""DynaMer's mechanics, on real (tiny, and depth-reduced ViT-B-layout) backbones."""
import math

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from medvtab.backbones import load_backbone
from medvtab.backbones.vit import ViTBackbone
from medvtab.errors import MedvtabError
from medvtab.methods import build_model, count_parameters, make_config
from medvtab.methods.dynamer import DynaMerLayer


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (4, 1, 28, 28), generator=g, dtype=torch.uint8)


def dynamer(pair, num_classes=3, seed=0, **options):
    torch.manual_seed(seed)
    return build_model("dynamer", make_config("dynamer", options), *pair, num_classes)


def layers(model) -> list[DynaMerLayer]:
    return list(model.runner.hooks.values())


def test_exactly_top_k_experts_per_token(pair):
    model = dynamer(pair, num_experts=5, top_k=2)
    layer = layers(model)[0]
    x = torch.randn(3, 50, 96)
    weights, _ = layer._route(layer.streams[0], x)
    assert ((weights > 0).sum(-1) == 2).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 50))


def test_closed_gates_give_back_the_backbones_outputs(pair, images):
    model = dynamer(pair).eval()
    with torch.no_grad():
        for layer in layers(model):
            for parts in layer.streams:
                parts.gate.bias.fill_(-1e4)  # sigmoid -> exactly 0
        xg, xm = model.runner(images)
        general, medical = pair
        torch.testing.assert_close(general.summary(xg), general(images), rtol=0, atol=0)
        torch.testing.assert_close(medical.summary(xm), medical(images), rtol=0, atol=0)


def test_open_gates_change_the_outputs(pair, images):
    model = dynamer(pair).eval()
    with torch.no_grad():
        for layer in layers(model):
            layer.experts.up.weight.normal_(std=0.1)
        xg, _ = model.runner(images)
        assert not torch.allclose(pair[0].summary(xg), pair[0](images))


@pytest.mark.parametrize("keep_ratio", [0.1, 0.3, 0.5, 1.0])
def test_exactly_ceil_rho_n_tokens_reach_the_adapter(pair, images, keep_ratio):
    model = dynamer(pair, keep_ratio=keep_ratio)
    n = 49  # tiny backbones: 7x7 patches, plus a CLS in both streams, which always goes through
    expected = math.ceil(keep_ratio * n) + 1
    routed, down = [], []
    hooks = [parts.router.register_forward_hook(lambda m, i, o: routed.append(i[0].shape))
             for layer in layers(model) for parts in layer.streams]
    hooks += [layer.experts.down.register_forward_hook(lambda m, i, o: down.append(i[0].shape[1]))
              for layer in layers(model)]
    model.set_fast(False)  # the reference calls the router modules (the fast path reads their weights)
    model(images)
    assert routed == [(4, expected, 96)] * 8  # per stream and layer: the kept tokens, no others
    assert down == ([n + 1] * 4 if keep_ratio == 1 else [expected] * 8)
    down.clear()
    model.set_fast(True)
    model(images)
    for h in hooks:
        h.remove()
    # The experts' hidden activations: one shared pass over all token pairs where both streams' kept rows are at
    # least as many (keep ratio 0.5 and 1), else one pass per stream over its kept rows.
    assert down == ([n + 1] * 4 if 2 * expected >= n + 1 else [expected] * 8)


@pytest.mark.parametrize("skip_mode", ["adapter", "later-blocks", "block"])
def test_each_skip_mode_runs_the_blocks_on_its_tokens(pair, images, skip_mode):
    """``adapter``: every block sees every token. ``later-blocks``: the tokens a layer's adapter took go through the
    next block; the first block sees every token. ``block``: each layer's skipping router picks, from its
    block's input, the tokens for the block and the adapter, the first block included."""
    model = dynamer(pair, keep_ratio=0.3, skip_mode=skip_mode).eval()
    kept = 1 + math.ceil(0.3 * 49)
    expected = {"adapter": [50] * 4, "later-blocks": [50] + [kept] * 3, "block": [kept] * 4}[skip_mode]
    seen = {}

    def record(key):
        def hook(module, args):
            seen[key] = args[0].shape[1]
        return hook

    hooks = [blk.register_forward_pre_hook(record((s, i)))
             for s, backbone in enumerate(pair) for i, blk in enumerate(backbone.model.blocks)]
    try:
        for fast in (True, False):
            seen.clear()
            model.set_fast(fast)
            with torch.no_grad():
                model(images)
            assert seen == {(s, i): expected[i] for s in (0, 1) for i in range(4)}
    finally:
        for h in hooks:
            h.remove()
    layer = layers(model)[0]
    xg = pair[0].embed(pair[0].preprocess(images))
    xm = pair[1].embed(pair[1].preprocess(images))
    assert layer.routes_own_block == (skip_mode == "block")
    picks = layer.pick(xg, xm) if skip_mode == "block" else layer(xg, xm)[2]
    if skip_mode == "adapter":
        assert picks is None
    else:
        keep_g, keep_m = picks.keep
        assert keep_g.shape == keep_m.shape == (4, math.ceil(0.3 * 49))
        assert (keep_g.diff(dim=1) > 0).all()  # sorted, distinct grid indices


def test_block_skip_leaves_skipped_tokens_untouched_by_the_block(pair, images):
    general = pair[0]
    tokens = general.embed(general.preprocess(images))
    keep = torch.tensor([[0, 5, 9]] * 4)
    out = general.run_block(1, tokens, keep)
    skipped = [i for i in range(49) if i not in (0, 5, 9)]
    torch.testing.assert_close(out[:, 1:][:, skipped], tokens[:, 1:][:, skipped], rtol=0, atol=0)
    assert not torch.allclose(out[:, 1:][:, [0, 5, 9]], tokens[:, 1:][:, [0, 5, 9]])


@pytest.mark.parametrize("skip_mode", ["adapter", "later-blocks", "block"])
def test_routers_get_gradients(pair, images, skip_mode):
    model = dynamer(pair, keep_ratio=0.5, skip_mode=skip_mode).train()
    labels = torch.tensor([0, 1, 2, 0])
    loss = torch.nn.functional.cross_entropy(model(images), labels) + model.auxiliary_loss()
    loss.backward()
    for i, layer in enumerate(layers(model)):
        for parts in layer.streams:
            routers = [("expert router", parts.router), ("skip router", parts.skip_router)]
            if i == len(layers(model)) - 1:
                # After the last block only the CLS tokens reach the head, and CLS is never skipped:
                # the last skip router has no influence on the loss, so no gradient.
                routers = routers[:1]
            for name, router in routers:
                grad = sum(p.grad.abs().sum() for p in router.parameters())
                assert grad > 0, (i, name)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)


def test_checkpoint_round_trip_gives_identical_logits(pair, images, tmp_path):
    model = dynamer(pair, keep_ratio=0.5, seed=1).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    save_file(model.trainable_state_dict(), tmp_path / "adapter.safetensors")
    from safetensors.torch import load_file

    again = dynamer(pair, keep_ratio=0.5, seed=2).eval()
    with torch.no_grad():
        assert not torch.equal(model(images), again(images))
        again.load_trainable_state_dict(load_file(tmp_path / "adapter.safetensors"), "test")
        torch.testing.assert_close(model(images), again(images), rtol=0, atol=0)


def test_trainable_parameter_count_matches_closed_form(pair):
    d, n, depth, classes = 96, 4, 4, 3
    for options, gate_dim, skip in [({}, 1, False), ({"gate_dim": "width/4", "keep_ratio": 0.5}, d // 4, True),
                                    ({"gates": "general", "gate_dim": "width"}, d, False),
                                    ({"bottleneck": 32, "router_hidden": 16, "keep_ratio": 0.3}, 1, True)]:
        r, h = options.get("bottleneck", d // 12), options.get("router_hidden", d // 12)
        gated_streams = 1 if options.get("gates") == "general" else 2
        experts = (2 * d * n * r + n * r) + n * r * d + n * d
        router = d * h + h + h * n + n
        skip_router = d * h + h + h * h + h
        per_layer = experts + 2 * router + gated_streams * (d * gate_dim + gate_dim) + (2 * skip_router if skip else 0)
        expected = depth * per_layer + (2 * d) * classes + classes
        assert count_parameters(dynamer(pair, **options), trainable=True) == expected, options


def test_layers_option_places_adapters(pair):
    assert sorted(int(i) for i in dynamer(pair, layers="last:2").runner.hooks) == [2, 3]
    assert sorted(int(i) for i in dynamer(pair, layers="0,3").runner.hooks) == [0, 3]
    for bad in ("last:9", "7", "x"):
        with pytest.raises(MedvtabError, match="layers"):
            dynamer(pair, layers=bad)


def test_invalid_options_are_named(pair):
    for options, field in [({"keep_ratio": 0}, "keep_ratio"), ({"top_k": 5}, "top_k"),
                           ({"gate_dim": "width/3"}, "gate_dim"), ({"colour": "red"}, "colour")]:
        with pytest.raises(MedvtabError, match=field):
            make_config("dynamer", options)


@pytest.mark.parametrize("gate_dim, groups", [("1", 1), ("width/4", 24), ("width", 96)])
def test_each_gate_value_is_shared_by_its_group_of_channels(pair, gate_dim, groups):
    parts = layers(dynamer(pair, gate_dim=gate_dim))[0].streams[0]
    with torch.no_grad():
        parts.gate.weight.normal_()
    g = parts.gate_values(torch.randn(2, 5, 96))
    assert g.shape == (2, 5, groups)
    delta = torch.randn(2, 5, 96)
    assert torch.equal(parts.apply_gate(g, delta), g.repeat_interleave(96 // groups, dim=-1) * delta)


def test_load_balancing_loss_penalises_collapse(pair):
    layer = layers(dynamer(pair))[0]
    parts = layer.streams[0]
    x = torch.randn(2, 50, 96)
    _, balanced = layer._route(parts, x)
    with torch.no_grad():
        parts.router[2].bias.copy_(torch.tensor([50.0, 49.0, 0.0, 0.0]))
    _, collapsed = layer._route(parts, x)
    assert collapsed > balanced
    assert dynamer(pair, balance_weight=0).auxiliary_loss() is None


def test_streams_of_different_widths_project_per_stream(images):
    general = load_backbone("tiny-general")
    torch.manual_seed(3)
    narrow = ViTBackbone(VisionTransformer(img_size=28, patch_size=4, embed_dim=48, depth=4, num_heads=3,
                                           num_classes=0), spec="narrow", input_size=28, mean=(0.5,) * 3,
                         std=(0.5,) * 3, random_init=True)
    model = dynamer((general, narrow))
    layer = layers(model)[0]
    assert layer.streams[0].project is None and layer.streams[1].project.out_features == 48
    model(images).sum().backward()


def test_routing_statistics_are_recorded_in_evaluation(pair, images):
    model = dynamer(pair, keep_ratio=0.5).eval()
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


@pytest.fixture(scope="module")
def vitb_pair(vitb_checkpoints):
    """DINOv2 (Meta's layout) and LVM-Med (SAM layout), depth-reduced ViT-B checkpoints from random weights."""
    return (load_backbone(f"dinov2-vitb14@{vitb_checkpoints['dinov2']}", depth=2),
            load_backbone(f"lvmmed-vitb@{vitb_checkpoints['lvmmed']}", depth=2))


@pytest.mark.parametrize("options", [{}, {"keep_ratio": 0.5, "skip_mode": "later-blocks"},
                                     {"keep_ratio": 0.5, "skip_mode": "block"}])
def test_dynamer_forward_and_backward_on_dinov2_and_lvmmed(vitb_pair, options):
    general, medical = vitb_pair
    assert general.grid == medical.grid == (14, 14)
    model = dynamer(vitb_pair, num_classes=2, **options).train()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    logits = model(images)
    assert logits.shape == (2, 2)
    (logits.sum() + model.auxiliary_loss()).backward()
    layer = layers(model)[0]
    assert layer.merges_cls is False and layer.starts == [1, 0]  # DINOv2's CLS stays in its stream
    assert layer.experts.down.weight.grad.abs().sum() > 0


def test_a_training_step_changes_only_trainable_parameters(pair, images):
    model = dynamer(pair, keep_ratio=0.5).train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    loss = torch.nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 2, 0])) + model.auxiliary_loss()
    loss.backward()
    optimizer.step()
    params = dict(model.named_parameters())
    assert frozen and all(torch.equal(params[n], v) for n, v in frozen.items())
    changed = [n for n, v in trainable.items() if not torch.equal(params[n], v)]
    assert "head.weight" in changed and any("experts" in n for n in changed) and any("gate" in n for n in changed)
