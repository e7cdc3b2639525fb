"""The paper's DynaMer layer (eqs. 2-4), on the bundled tiny backbones; model-level checks run the paper's path
(``set_fast(False)``) and the fast one."""
import math

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from medvtab.backbones import load_backbone
from medvtab.backbones.vit import ViTBackbone
from medvtab.errors import MedvtabError
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
    hooks = [layer.router.register_forward_hook(lambda m, i, o: routed.append(i[0].shape)) for layer in layers]
    hooks += [layer.experts.down.register_forward_hook(lambda m, i, o: down.append(i[0].shape[1]))
              for layer in layers]
    model(images)
    for h in hooks:
        h.remove()
    assert routed == [(4, expected, 96)] * 8  # the shared router, per stream and layer: the kept tokens, no others
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
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    layers = list(model.runner.hooks.values())
    for i, layer in enumerate(layers):
        for s, parts in enumerate(layer.streams):
            routers = [("expert router", layer.router_of(s)), ("skip router", parts.skip_router)]
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
    layer = paper_layer(pair, preset="lite")
    x = torch.randn(2, 50, 96)
    weights, logits = layer.route(0, x)
    balanced = layer._balance_loss(logits, weights)
    with torch.no_grad():
        layer.streams[0].router[2].bias.copy_(torch.tensor([50.0, 49.0, 0.0, 0.0]))
    weights, logits = layer.route(0, x)
    assert layer._balance_loss(logits, weights) > balanced


def test_no_auxiliary_loss_by_default_and_the_balance_loss_with_lite(dynamer, images):
    for options, has_loss in [({}, False), ({"preset": "lite"}, True), ({"balance_weight": 0.01}, True),
                              ({"preset": "lite", "balance_weight": 0}, False)]:
        model = dynamer(**options).train()
        model(images)
        assert (model.auxiliary_loss() is not None) == has_loss, options


def test_one_adaptation_router_is_shared_by_the_streams_each_reading_its_own_tokens(dynamer, images):
    """The paper: "the shared MoE adapter containing a router", and the general and medical tokens of a pair "may
    activate different experts since their token information seen by the router is not the same"."""
    model = dynamer(moved=True).eval()
    model.set_fast(False)
    layer = model.runner.hooks["1"]
    assert layer.router is not None and all(parts.router is None for parts in layer.streams)
    assert layer.router_of(0) is layer.router_of(1) is layer.router
    seen = []
    handle = layer.router.register_forward_hook(lambda m, i, o: seen.append((i[0].clone(), o.clone())))
    captured = {}
    pre = layer.register_forward_pre_hook(lambda m, args: captured.update(xg=args[0].clone(), xm=args[1].clone()))
    with torch.no_grad():
        model(images)
    handle.remove()
    pre.remove()
    (general_in, general_logits), (medical_in, medical_logits) = seen
    torch.testing.assert_close(general_in, captured["xg"][:, layer.starts[0]:], rtol=0, atol=0)
    torch.testing.assert_close(medical_in, captured["xm"][:, layer.starts[1]:], rtol=0, atol=0)
    picks = [logits.topk(2, dim=-1).indices.sort(dim=-1).values for logits in (general_logits, medical_logits)]
    assert not torch.equal(picks[0], picks[1])  # the streams pick experts of their own
    per_stream = dynamer(router="per-stream").runner.hooks["1"]
    assert per_stream.router is None and per_stream.router_of(0) is not per_stream.router_of(1)


def test_gated_layers_gates_only_the_named_layers_with_adapters_everywhere(dynamer, pair, images):
    model = dynamer(gated_layers="1,3").eval()
    assert sorted(model.runner.hooks) == ["0", "1", "2", "3"]
    for i, layer in model.runner.hooks.items():
        assert all((parts.gate is not None) == (i in ("1", "3")) for parts in layer.streams), i
    # an ungated layer adds the experts' change in full (x_hat = x_tilde): closing the gates of the gated
    # layers leaves the others changing the tokens
    with torch.no_grad():
        for layer in model.runner.hooks.values():
            layer.experts.up.weight.normal_(std=0.1)
            for parts in layer.streams:
                if parts.gate is not None:
                    parts.gate.bias.fill_(-1e4)
        xg, _ = model.runner(images)
        assert not torch.allclose(pair[0].summary(xg), pair[0](images))
    assert all(parts.gate is None for layer in dynamer(gates="none").runner.hooks.values() for parts in layer.streams)
    with pytest.raises(MedvtabError, match="gated_layers"):
        dynamer(gated_layers="last:9")


@pytest.mark.parametrize("skip_mode", ["adapter", "later-blocks", "block"])
@pytest.mark.parametrize("fast", [False, True])
def test_keep_ratio_one_with_the_skipping_router_equals_no_skipping(dynamer, images, skip_mode, fast):
    """Table 7's rows differ only in which tokens are skipped: a model with skipping routers that keeps every token
    computes the logits of the same model without skipping, in evaluation and in training, and the same gradients
    of the weights the skipping routers do not read from (the head and the last layer; earlier layers' gradients
    also carry what the routers' learning sends back through the tokens they read)."""
    skipping = dynamer(keep_ratio=0.5, skip_mode=skip_mode, moved=True)
    plain = dynamer(keep_ratio=1.0, moved=True, seed=1)
    missing, unexpected = plain.load_state_dict(skipping.state_dict(), strict=False)
    assert not missing and unexpected and all("skip_router" in k for k in unexpected)
    for layer in skipping.runner.hooks.values():
        layer.keep = 49  # every patch token
    labels = torch.tensor([0, 1, 2, 0])
    runs = []
    for model in (skipping, plain):
        model.set_fast(fast)
        with torch.no_grad():
            evaluated = model.eval()(images)
        trained = model.train()(images)
        torch.nn.functional.cross_entropy(trained, labels).backward()
        runs.append((evaluated, trained.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (evaluated, trained, grads), (plain_evaluated, plain_trained, plain_grads) = runs
    torch.testing.assert_close(evaluated, plain_evaluated, rtol=0, atol=0)
    torch.testing.assert_close(trained, plain_trained, rtol=0, atol=0)
    for name, g in plain_grads.items():
        if name.startswith(("head.", "runner.hooks.3.")):
            torch.testing.assert_close(grads[name], g, rtol=1e-6, atol=1e-8, msg=name)
    assert any("skip_router" in n and g.abs().sum() > 0 for n, g in grads.items())  # the routers still learn


def test_streams_of_different_widths_project_per_stream(dynamer, images):
    general = load_backbone("tiny-general")
    torch.manual_seed(3)
    narrow = ViTBackbone(VisionTransformer(img_size=28, patch_size=4, embed_dim=48, depth=4, num_heads=3,
                                           num_classes=0), spec="narrow", input_size=28, mean=(0.5,) * 3,
                         std=(0.5,) * 3, random_init=True)
    model = dynamer(backbones=(general, narrow))
    layer = model.runner.hooks["0"]
    assert layer.streams[0].project is None and layer.streams[1].project.out_features == 48
    assert layer.router is None  # one router cannot read both widths: one per stream
    model(images).sum().backward()
