"""mof-adapter, moe-adapter and gmoe-adapter: counts, what trains, identity at start, how the two streams mix,
the callers' backbones untouched, the DINOv2 + LVM-Med pair, and one real training run each."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import VisionTransformer

from medvtab.backbones import load_backbone
from medvtab.backbones.vit import ViTBackbone
from medvtab.data import load_task
from medvtab.data.loading import bundled_path
from medvtab.engine.loop import TrainConfig
from medvtab.engine.run import load_run, train_run
from medvtab.errors import MedvtabError
from medvtab.methods import build_model, count_parameters, make_config, parameter_counts

METHODS = ["mof-adapter", "moe-adapter", "gmoe-adapter"]


@pytest.fixture(scope="module")
def batch():
    """Eight real PneumoniaMNIST training images (uint8, 1 x 28 x 28) and their labels."""
    with np.load(bundled_path("pneumoniamnist")) as npz:
        images = torch.from_numpy(npz["train_images"][:8]).unsqueeze(1)
        labels = torch.from_numpy(npz["train_labels"][:8].reshape(-1).astype(np.int64))
    return images, labels


@pytest.fixture(scope="module")
def narrow():
    """A ViT of width 48 on the same 7x7 grid and depth as the tiny ones."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = VisionTransformer(img_size=28, patch_size=4, embed_dim=48, depth=4, num_heads=3, num_classes=0)
    return ViTBackbone(model, spec="narrow", input_size=28, mean=(0.5,) * 3, std=(0.5,) * 3, random_init=True)


@pytest.fixture(scope="module")
def vitb_pair(vitb_checkpoints):
    """DINOv2 (Meta's layout) and LVM-Med (SAM layout), depth-reduced ViT-B checkpoints from random weights."""
    root = {k: str(v) for k, v in vitb_checkpoints.items()}
    # 8x8 grids (112 px / 14 px patches, 128 px / 16 px) keep the test fast; the layouts are the real ones.
    return (load_backbone(f"dinov2-vitb14@{root['dinov2']}", img_size=112, depth=2),
            load_backbone(f"lvmmed-vitb@{root['lvmmed']}", img_size=128, depth=2))


def build(name, pair, classes=2, seed=0, **options):
    torch.manual_seed(seed)
    return build_model(name, make_config(name, options), *pair, classes)


def perturb(modules, std=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * std)


def up_projections(name, model):
    if name == "mof-adapter":
        return [a.up for stream in model.adapters() for a in stream]
    if name == "moe-adapter":
        return [a.up for layer in model.layers() for a in layer.adapters]
    return [e.up for layer in model.layers() for e in layer.experts]


def streams(pair, images):
    """The two streams' tokens after block 0, as the hook after block 0 receives them."""
    g, m = pair
    return g.block(0, g.embed(g.preprocess(images))), m.block(0, m.embed(m.preprocess(images)))


# --- configuration ----------------------------------------------------------------------------------------

def test_invalid_options_are_named(pair):
    for name, options, field in [("mof-adapter", {"bottleneck": 0}, "bottleneck"),
                                 ("mof-adapter", {"activation": "tanh"}, "activation"),
                                 ("moe-adapter", {"experts": 4}, "experts"),
                                 ("gmoe-adapter", {"bottleneck": -1}, "bottleneck")]:
        with pytest.raises(MedvtabError, match=field):
            make_config(name, options)
    with pytest.raises(MedvtabError, match="pool_heads"):
        build("mof-adapter", pair, pool_heads=7)


@pytest.mark.parametrize("name", METHODS)
def test_pairs_that_do_not_align_are_refused(pair, name):
    general = pair[0]
    wrong_grid = load_backbone("tiny-medical", img_size=32)  # 8x8 patches
    with pytest.raises(MedvtabError, match="grids differ"):
        build(name, (general, wrong_grid))
    with pytest.raises(MedvtabError, match="both a general and a medical"):
        build(name, (general, None))


def test_mof_needs_the_same_grid_but_not_the_same_depth(pair, batch):
    shallow = load_backbone("tiny-medical", depth=2)
    assert build("mof-adapter", (pair[0], shallow))(batch[0]).shape == (8, 2)
    for name in ("moe-adapter", "gmoe-adapter"):
        with pytest.raises(MedvtabError, match="depths differ"):
            build(name, (pair[0], shallow))


# --- parameter counts -------------------------------------------------------------------------------------

def test_trainable_parameter_counts_match_closed_forms(pair, narrow):
    d, depth, n, c = 96, 4, 49, 2
    for r in (8, 24):
        adapter = d * r + r + r * d + d  # a Pfeiffer adapter: down + up, both with bias
        mha = 3 * d * d + 3 * d + d * d + d  # in-projection (q, k, v) + out-projection
        mof_head = 2 * n * d + d + mha + 2 * d + d * c + c  # positions, query, pooling, LayerNorm, classifier
        moe = 2 * ((2 * d) * r + r + r * d + d)  # two MLPs on the pair (2d -> r -> d)
        gmoe = 2 * (d * r + r + r * d + d) + 2 * (d * 2 + 2)  # two experts (d -> r -> d), a 2-way gate per stream
        head = 2 * d * c + c  # linear on both summaries
        expected = {"mof-adapter": 2 * depth * adapter + mof_head, "moe-adapter": depth * moe + head,
                    "gmoe-adapter": depth * gmoe + head}
        for name, count in expected.items():
            model = build(name, pair, bottleneck=r)
            assert count_parameters(model, trainable=True) == count, (name, r)
            one = sum(p.numel() for p in pair[0].parameters())
            assert parameter_counts(model, list(pair))["params_ratio"] == round((one + count) / one, 4)
    # Different widths (96 and 48): the narrow stream is projected (MoF: to 96 before interleaving; GMoE: the
    # experts' 96-wide mixture back to 48); MoE's MLPs read 96 + 48 and write each stream's own width.
    w, r = 48, 8
    mha = 4 * d * d + 4 * d
    mof = (depth * ((d * r + r + r * d + d) + (w * r + r + r * w + w)) + (w * d + d)
           + (2 * n * d + d + mha + 2 * d + d * c + c))
    moe = depth * (((d + w) * r + r + r * d + d) + ((d + w) * r + r + r * w + w)) + (d + w) * c + c
    gmoe = (depth * ((d * r + r + r * d + d) + (w * r + r + r * d + d) + (d * 2 + 2) + (w * 2 + 2) + (d * w + w))
            + (d + w) * c + c)
    for name, count in {"mof-adapter": mof, "moe-adapter": moe, "gmoe-adapter": gmoe}.items():
        assert count_parameters(build(name, (pair[0], narrow), bottleneck=r), trainable=True) == count, name


@pytest.mark.parametrize("name", METHODS)
def test_frozen_parameters_stay_and_trainable_ones_move(pair, batch, name):
    images, labels = batch
    model = build(name, pair, bottleneck=16).train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and trainable
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    # Zero-initialised up-projections leave the down-projections (and GMoE's gates) without a gradient in the
    # first step: after a second one, every trainable tensor has moved through its own gradient.
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        opt.step()
    params = dict(model.named_parameters())
    for n, value in frozen.items():
        assert torch.equal(params[n], value), n
    for n, value in trainable.items():
        assert not torch.equal(params[n], value), n


# --- identity at the start ----------------------------------------------------------------------------------

def test_mof_zero_initialised_adapters_leave_each_backbone_unchanged(pair, batch):
    images = batch[0]
    model = build("mof-adapter", pair).eval()
    copies = (model.general, model.medical)
    assert [len(a) for a in model.adapters()] == [4, 4]
    with torch.no_grad():
        for copy, original in zip(copies, pair):
            torch.testing.assert_close(copy(images), original(images), rtol=0, atol=0)
        perturb(up_projections("mof-adapter", model))
        for copy, original in zip(copies, pair):
            assert not torch.allclose(copy(images), original(images), atol=1e-4)


@pytest.mark.parametrize("name", ["moe-adapter", "gmoe-adapter"])
def test_mixtures_start_as_the_identity(pair, batch, name):
    images = batch[0]
    model = build(name, pair).eval()
    general, medical = pair
    with torch.no_grad():
        xg, xm = model.runner(images)
        torch.testing.assert_close(general.summary(xg), general(images), rtol=0, atol=0)
        torch.testing.assert_close(medical.summary(xm), medical(images), rtol=0, atol=0)
        perturb(up_projections(name, model))
        xg, xm = model.runner(images)
        assert not torch.allclose(general.summary(xg), general(images), atol=1e-4)
        assert not torch.allclose(medical.summary(xm), medical(images), atol=1e-4)


# --- how the streams mix ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["moe-adapter", "gmoe-adapter"])
def test_each_stream_depends_on_the_other(pair, batch, name):
    model = build(name, pair)
    perturb(up_projections(name, model))  # out of the identity start
    layer = model.layers()[0]
    xg, xm = streams(pair, batch[0])
    noise = torch.randn(xg.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        g, m, picks = layer(xg, xm)
        assert picks is None  # every token goes through the next block
        g_after_med_change, m_same, _ = layer(xg, xm + noise)
        g_same, m_after_gen_change, _ = layer(xg + noise, xm)
    assert not torch.allclose(g, g_after_med_change, atol=1e-4)
    assert not torch.allclose(m, m_after_gen_change, atol=1e-4)
    # the tiny pair both have a CLS: it merges, so it is adapted too
    assert not torch.allclose(g[:, 0], xg[:, 0], atol=1e-4)


def test_moe_output_replaces_tokens_with_the_adapters_output(pair, batch):
    """Equation 1: x_gen <- Adapter_gen([x_gen; x_med]) (here x_gen + MLP_gen([x_gen; x_med]))."""
    model = build("moe-adapter", pair)
    perturb(up_projections("moe-adapter", model))
    layer = model.layers()[0]
    xg, xm = streams(pair, batch[0])
    with torch.no_grad():
        g, m, _ = layer(xg, xm)
        pair_tokens = torch.cat([xg, xm], dim=-1)
        torch.testing.assert_close(g, xg + layer.adapters[0](pair_tokens))
        torch.testing.assert_close(m, xm + layer.adapters[1](pair_tokens))


def test_gmoe_gates_weigh_the_two_experts_per_stream(pair, batch):
    model = build("gmoe-adapter", pair)
    perturb(up_projections("gmoe-adapter", model))
    perturb(model.layers()[0].gates, std=1.0)
    layer = model.layers()[0]
    xg, xm = streams(pair, batch[0])
    with torch.no_grad():
        g, m, _ = layer(xg, xm)
        experts = [layer.experts[0](xg), layer.experts[1](xm)]
        for s, (x, out) in enumerate(((xg, g), (xm, m))):
            alpha = layer.gate_weights(s, x)
            assert alpha.shape == (*x.shape[:2], 2)
            torch.testing.assert_close(alpha.sum(-1), torch.ones(x.shape[:2]))
            torch.testing.assert_close(out, x + alpha[..., :1] * experts[0] + alpha[..., 1:] * experts[1])
        # each stream has its own gate: the two streams weigh the experts differently
        assert not torch.allclose(layer.gate_weights(0, xg), layer.gate_weights(1, xm), atol=1e-3)


def test_gmoe_records_expert_weights_in_evaluation(pair, batch):
    model = build("gmoe-adapter", pair).eval()
    model.set_record_stats(True)
    with torch.no_grad():
        model(batch[0])
    stats = model.routing_stats()
    assert sorted(stats) == ["0", "1", "2", "3"]
    for layer in stats.values():
        for stream in ("general", "medical"):
            assert sum(layer[stream]["expert_weights"]) == pytest.approx(1.0, abs=1e-3)
    model.reset_routing_stats()
    assert model.routing_stats()["0"]["general"]["expert_weights"] == [0.0, 0.0]


def test_mof_head_sees_the_streams_interleaved(pair, batch):
    images = batch[0]
    model = build("mof-adapter", pair).eval()
    perturb(up_projections("mof-adapter", model))
    seen = []
    handle = model.head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        logits = model(images)
    handle.remove()
    sequence = seen[0]
    assert sequence.shape == (8, 2 * 49, 96)
    with torch.no_grad():
        expected = []
        for backbone in (model.general, model.medical):  # each adapted copy run on its own
            tokens = backbone.embed(backbone.preprocess(images))
            for i in range(backbone.depth):
                tokens = backbone.block(i, tokens)
            expected.append(backbone.model.norm(tokens)[:, 1:])  # normed patch tokens, CLS dropped
        torch.testing.assert_close(sequence[:, 0::2], expected[0], rtol=0, atol=0)
        torch.testing.assert_close(sequence[:, 1::2], expected[1], rtol=0, atol=0)
        torch.testing.assert_close(model.head(sequence), logits)
        # Order matters through the learned positions (small at init, as they start at std 0.02: train them).
        swapped = torch.stack([sequence[:, 1::2], sequence[:, 0::2]], dim=2).flatten(1, 2)  # m_1, g_1, m_2, ...
        model.head.pos_embed.normal_()
        model.head.query.normal_()
        assert not torch.allclose(model.head(swapped), model.head(sequence), atol=1e-3)
        model.head.pos_embed.zero_()  # without positions the head cannot tell the order
        torch.testing.assert_close(model.head(swapped), model.head(sequence), rtol=0, atol=1e-5)


# --- the callers' backbones ---------------------------------------------------------------------------------

def test_the_backbones_passed_in_are_never_modified(pair, batch):
    images, labels = batch
    before = [{k: v.clone() for k, v in b.state_dict().items()} for b in pair]
    for name in METHODS:
        model = build(name, pair, bottleneck=16).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            opt.step()
    for backbone, saved in zip(pair, before):
        after = backbone.state_dict()
        assert set(after) == set(saved)
        for k, v in saved.items():
            assert torch.equal(after[k], v), k
        assert all(type(blk.mlp) is Mlp for blk in backbone.model.blocks)
        assert not any(p.requires_grad for p in backbone.parameters())


# --- DINOv2 + LVM-Med, and different widths -----------------------------------------------------------------

@pytest.mark.parametrize("name", METHODS)
def test_forward_and_backward_on_dinov2_and_lvmmed(vitb_pair, name):
    general, medical = vitb_pair
    assert general.grid == medical.grid == (8, 8) and general.has_cls and not medical.has_cls
    model = build(name, vitb_pair, bottleneck=8).train()
    perturb(up_projections(name, model), std=0.01)  # so gradients reach every part in one backward
    images = torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    logits = model(images)
    assert logits.shape == (2, 2)
    logits.sum().backward()
    # After the last block only DINOv2's CLS reaches the head, and it does not merge: the last layer's parts
    # that write the general stream's patch tokens only cannot influence the loss, so they get no gradient.
    last = f"runner.hooks.{general.depth - 1}."
    dead = {"moe-adapter": (last + "adapters.0.",), "gmoe-adapter": (last + "gates.0.",)}.get(name, ())
    for n, p in model.named_parameters():
        if p.requires_grad:
            has_grad = p.grad is not None and p.grad.abs().sum() > 0
            assert has_grad == (not n.startswith(dead)), n
    if name != "mof-adapter":
        layer = model.layers()[0]
        assert layer.starts == [1, 0]  # DINOv2's CLS stays in its stream, patch tokens merge
        xg, xm = streams(vitb_pair, images)
        with torch.no_grad():
            g, m, _ = layer(xg, xm)
        torch.testing.assert_close(g[:, 0], xg[:, 0], rtol=0, atol=0)  # the unmerged CLS passes untouched
        assert g.shape == xg.shape and m.shape == xm.shape
    else:
        seen = []
        handle = model.head.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
        with torch.no_grad():
            model(images)
        handle.remove()
        assert seen == [(2, 2 * 64, 768)]  # DINOv2's CLS is not interleaved


@pytest.mark.parametrize("name", METHODS)
def test_streams_of_different_widths(pair, narrow, batch, name):
    model = build(name, (pair[0], narrow), bottleneck=8)
    perturb(up_projections(name, model), std=0.01)
    F.cross_entropy(model(batch[0]), batch[1]).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# --- through the real engine -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_train_run_end_to_end(small_task, tmp_path, name):
    out = tmp_path / "run"
    metrics = train_run(task=str(small_task), method=name, general_spec="tiny-general",
                        medical_spec="tiny-medical", out=out, train_cfg=TrainConfig(epochs=1, batch_size=32, seed=0),
                        options={}, on_note=lambda m: None)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["split_sizes"] == {"train": 64, "val": 16, "test": 16}
    assert metrics["params_ratio"] > 1.0
    if name == "gmoe-adapter":
        assert sorted(metrics["routing"]) == ["0", "1", "2", "3"]
    # the saved run loads back and reproduces the test accuracy
    model, _, _ = load_run(out)
    test = load_task(str(small_task), seed=0, image_size=28).test
    with torch.no_grad():
        predictions = model(torch.from_numpy(test.images).permute(0, 3, 1, 2)).argmax(1).numpy()
    assert float((predictions == test.labels).mean()) == pytest.approx(metrics["accuracy"], abs=1e-6)
