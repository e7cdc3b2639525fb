"""The paper's DynaMer layer (eqs. 2-4), on the bundled tiny backbones; model-level checks run the paper's path
(``set_fast(False)``) and the fast one."""
import math

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from medvtab.backbones import load_backbone
from medvtab.backbones.vit import ViTBackbone
from medvtab.methods import make_config
from medvtab.methods.dynamer.layer import DynaMerLayer


def paper_layer(pair, **options) -> DynaMerLayer:
    torch.manual_seed(0)
    return DynaMerLayer(make_config("dynamer", options), pair[0].info, pair[1].info, merges_cls=True)


def test_exactly_top_k_experts_per_token(pair):
    layer = paper_layer(pair, num_experts=5, top_k=2)
    weights, logits = layer.route(0, torch.randn(3, 50, 96))
    assert logits.shape == weights.shape == (3, 50, 5)
    assert ((weights > 0).sum(-1) == 2).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 50))


@pytest.mark.parametrize("fast", [False, True])
def test_closed_gates_give_back_the_backbones_outputs(dynamer, pair, images, fast):
    model = dynamer().eval()
    model.set_fast(fast)
    with torch.no_grad():
        for layer in model.runner.hooks.values():
            for parts in layer.streams:
                parts.gate.bias.fill_(-1e4)  # sigmoid -> exactly 0
        xg, xm = model.runner(images)
        general, medical = pair
        torch.testing.assert_close(general.summary(xg), general(images), rtol=0, atol=0)
        torch.testing.assert_close(medical.summary(xm), medical(images), rtol=0, atol=0)


def test_open_gates_change_the_outputs(dynamer, pair, images):
    model = dynamer().eval()
    with torch.no_grad():
        for layer in model.runner.hooks.values():
            layer.experts.up.weight.normal_(std=0.1)
        xg, _ = model.runner(images)
        assert not torch.allclose(pair[0].summary(xg), pair[0](images))


@pytest.mark.parametrize("keep_ratio", [0.1, 0.3, 0.5, 1.0])
def test_exactly_ceil_rho_n_tokens_reach_the_adapter(dynamer, images, keep_ratio):
    model = dynamer(keep_ratio=keep_ratio)
    model.set_fast(False)  # the paper's layer calls the router modules (the fast one reads their weights)
    n = 49  # tiny backbones: 7x7 patches, plus a CLS in both streams, which always goes through
    expected = math.ceil(keep_ratio * n) + 1
    routed, down = [], []
    layers = list(model.runner.hooks.values())
    hooks = [parts.router.register_forward_hook(lambda m, i, o: routed.append(i[0].shape))
             for layer in layers for parts in layer.streams]
    hooks += [layer.experts.down.register_forward_hook(lambda m, i, o: down.append(i[0].shape[1]))
              for layer in layers]
    model(images)
    for h in hooks:
        h.remove()
    assert routed == [(4, expected, 96)] * 8  # per stream and layer: the kept tokens, no others
    assert down == ([n + 1] * 4 if keep_ratio == 1 else [expected] * 8)


@pytest.mark.parametrize("skip_mode", ["adapter", "later-blocks", "block"])
def test_each_skip_mode_runs_the_blocks_on_its_tokens(dynamer, pair, images, skip_mode):
    """``adapter``: every block sees every token. ``later-blocks``: the tokens a layer's adapter took go through the
    next block; the first block sees every token. ``block``: each layer's skipping router picks, from its
    block's input, the tokens for the block and the adapter, the first block included."""
    model = dynamer(keep_ratio=0.3, skip_mode=skip_mode).eval()
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
    layer = model.runner.hooks["0"]
    xg, xm = model.runner.embed(images)
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
    tokens = general.embed_images(images)
    keep = torch.tensor([[0, 5, 9]] * 4)
    out = general.run_block(1, tokens, keep)
    skipped = [i for i in range(49) if i not in (0, 5, 9)]
    torch.testing.assert_close(out[:, 1:][:, skipped], tokens[:, 1:][:, skipped], rtol=0, atol=0)
    assert not torch.allclose(out[:, 1:][:, [0, 5, 9]], tokens[:, 1:][:, [0, 5, 9]])


@pytest.mark.parametrize("skip_mode", ["adapter", "later-blocks", "block"])
def test_routers_get_gradients(dynamer, images, skip_mode):
    model = dynamer(keep_ratio=0.5, skip_mode=skip_mode).train()
    labels = torch.tensor([0, 1, 2, 0])
    loss = torch.nn.functional.cross_entropy(model(images), labels) + model.auxiliary_loss()
    loss.backward()
    layers = list(model.runner.hooks.values())
    for i, layer in enumerate(layers):
        for parts in layer.streams:
            routers = [("expert router", parts.router), ("skip router", parts.skip_router)]
            if i == len(layers) - 1:
                # After the last block only the CLS tokens reach the head, and CLS is never skipped:
                # the last skip router has no influence on the loss, so no gradient.
                routers = routers[:1]
            for name, router in routers:
                grad = sum(p.grad.abs().sum() for p in router.parameters())
                assert grad > 0, (i, name)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)


@pytest.mark.parametrize("gate_dim, groups", [("1", 1), ("width/4", 24), ("width", 96)])
def test_each_gate_value_is_shared_by_its_group_of_channels(pair, gate_dim, groups):
    layer = paper_layer(pair, gate_dim=gate_dim)
    parts = layer.streams[0]
    with torch.no_grad():
        parts.gate.weight.normal_()
    g = layer.gate(0, torch.randn(2, 5, 96))
    assert g.shape == (2, 5, groups)
    delta = torch.randn(2, 5, 96)
    assert torch.equal(parts.apply_gate(g, delta), g.repeat_interleave(96 // groups, dim=-1) * delta)
    assert paper_layer(pair, gates="general").gate(1, torch.randn(2, 5, 96)) is None


def test_load_balancing_loss_penalises_collapse(dynamer, pair):
    layer = paper_layer(pair)
    x = torch.randn(2, 50, 96)
    weights, logits = layer.route(0, x)
    balanced = layer._balance_loss(logits, weights)
    with torch.no_grad():
        layer.streams[0].router[2].bias.copy_(torch.tensor([50.0, 49.0, 0.0, 0.0]))
    weights, logits = layer.route(0, x)
    assert layer._balance_loss(logits, weights) > balanced
    assert dynamer(balance_weight=0).auxiliary_loss() is None


def test_streams_of_different_widths_project_per_stream(dynamer, images):
    general = load_backbone("tiny-general")
    torch.manual_seed(3)
    narrow = ViTBackbone(VisionTransformer(img_size=28, patch_size=4, embed_dim=48, depth=4, num_heads=3,
                                           num_classes=0), spec="narrow", input_size=28, mean=(0.5,) * 3,
                         std=(0.5,) * 3, random_init=True)
    model = dynamer(backbones=(general, narrow))
    layer = model.runner.hooks["0"]
    assert layer.streams[0].project is None and layer.streams[1].project.out_features == 48
    model(images).sum().backward()
