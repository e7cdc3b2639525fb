"""adapter-general, adapter-medical (Pfeiffer) and lora (peft): counts, what trains, identity at start, LoRA
merging, the caller's backbone untouched, and one real training run each."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.layers import Mlp

from medvtab.backbones import load_backbone
from medvtab.data import load_task
from medvtab.data.loading import bundled_path
from medvtab.engine.loop import TrainConfig
from medvtab.engine.run import load_run, train_run
from medvtab.errors import MedvtabError
from medvtab.methods import build_model, count_parameters, make_config, parameter_counts, resolve_backbone_specs
from medvtab.methods.adapters import AdaptedMlp


@pytest.fixture(scope="module")
def general():
    return load_backbone("tiny-general")


@pytest.fixture(scope="module")
def medical():
    return load_backbone("tiny-medical")


@pytest.fixture(scope="module")
def batch():
    """Eight real PneumoniaMNIST training images (uint8, 1 x 28 x 28) and their labels."""
    with np.load(bundled_path("pneumoniamnist")) as npz:
        images = torch.from_numpy(npz["train_images"][:8]).unsqueeze(1)
        labels = torch.from_numpy(npz["train_labels"][:8].reshape(-1).astype(np.int64))
    return images, labels


@pytest.fixture(scope="module")
def lvmmed(vitb_checkpoints):
    """LVM-Med (SAM layout), a depth-reduced ViT-B checkpoint from random weights."""
    return load_backbone(f"lvmmed-vitb@{vitb_checkpoints['lvmmed']}", img_size=64, depth=2)


def build(name, backbone, classes=2, seed=0, **options):
    torch.manual_seed(seed)
    return build_model(name, make_config(name, options), backbone, None, classes)


def adapter_ups(model):
    return [a.up for a in model.adapters()]


def lora_bs(model):
    return [layer.lora_B["default"] for layer in model.lora_layers()]


def perturb(modules, std=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * std)


# --- configuration ----------------------------------------------------------------------------------------

def test_adapter_names_fix_the_backbone(general, medical):
    assert make_config("adapter-general", {}).backbone == "general"
    assert make_config("adapter-medical", {}).backbone == "medical"
    assert make_config("adapter-medical", {"backbone": "medical"}).backbone == "medical"  # a saved config reloads
    with pytest.raises(MedvtabError, match="backbone.*adapter-general"):
        make_config("adapter-medical", {"backbone": "general"})
    with pytest.raises(MedvtabError, match="backbone.*adapter-medical"):
        make_config("adapter-general", {"backbone": "medical"})
    for name, spec in (("adapter-general", "tiny-general"), ("adapter-medical", "tiny-medical")):
        assert resolve_backbone_specs(name, make_config(name, {}), "tiny-general", "tiny-medical") == [spec]


def test_invalid_options_are_named():
    for name, options, field in [("adapter-general", {"bottleneck": 0}, "bottleneck"),
                                 ("adapter-medical", {"activation": "tanh"}, "activation"),
                                 ("lora", {"r": 0}, "r"), ("lora", {"dropout": 1.0}, "dropout"),
                                 ("lora", {"target_modules": []}, "target_modules"),
                                 ("lora", {"rank": 4}, "rank")]:
        with pytest.raises(MedvtabError, match=field):
            make_config(name, options)
    assert make_config("lora", {"target_modules": "qkv, proj"}).target_modules == ("qkv", "proj")


def test_lora_target_that_matches_nothing_is_named(general):
    with pytest.raises(MedvtabError, match="target_modules"):
        build("lora", general, target_modules="no_such_layer")


# --- parameter counts -------------------------------------------------------------------------------------

def test_trainable_parameter_counts_match_closed_forms(general, medical):
    d, depth, classes = 96, 4, 2
    head = d * classes + classes
    for r in (768, 8):
        adapter = d * r + r + r * d + d  # down (with bias) + up (with bias), one per block
        for name, backbone in (("adapter-general", general), ("adapter-medical", medical)):
            model = build(name, backbone, bottleneck=r)
            assert count_parameters(model, trainable=True) == depth * adapter + head, (name, r)
            one = sum(p.numel() for p in backbone.parameters())
            assert parameter_counts(model, [backbone])["params_ratio"] == round((one + depth * adapter + head) / one, 4)
    # LoRA on qkv (d -> 3d): A is r x d, B is 3d x r; on proj (d -> d) too: r x d and d x r.
    for r, targets, per_block in [(8, "qkv", 8 * (d + 3 * d)), (4, "qkv", 4 * (d + 3 * d)),
                                  (8, "qkv,proj", 8 * (d + 3 * d) + 8 * (d + d))]:
        model = build("lora", general, r=r, target_modules=targets)
        assert count_parameters(model, trainable=True) == depth * per_block + head, (r, targets)


def test_frozen_parameters_stay_and_trainable_ones_move(general, batch):
    images, labels = batch
    for name, options in (("adapter-general", {}), ("adapter-medical", {}), ("lora", {})):
        model = build(name, general, **options).train()
        frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        assert frozen and trainable
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
        # Zero-initialised up-projections (and LoRA's B) leave the down-projections (A) without a gradient
        # in the first step: after a second one, every trainable tensor has moved through its own gradient.
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            opt.step()
        params = dict(model.named_parameters())
        for n, value in frozen.items():
            assert torch.equal(params[n], value), (name, n)
        for n, value in trainable.items():
            assert not torch.equal(params[n], value), (name, n)


# --- identity at the start ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["adapter-general", "adapter-medical"])
def test_zero_initialised_adapters_leave_the_backbone_output_unchanged(general, medical, batch, name):
    backbone = general if name == "adapter-general" else medical
    images = batch[0]
    model = build(name, backbone).eval()
    assert len(model.adapters()) == backbone.depth
    assert all(isinstance(blk.mlp, AdaptedMlp) for blk in model.backbone.model.blocks)
    with torch.no_grad():
        torch.testing.assert_close(model.features(images), backbone(images), rtol=0, atol=0)
        perturb(adapter_ups(model))
        assert not torch.allclose(model.features(images), backbone(images), atol=1e-4)


def test_adapter_on_a_sam_backbone_starts_as_the_identity(lvmmed):
    images = torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    model = build("adapter-medical", lvmmed).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.features(images), lvmmed(images), rtol=0, atol=0)
    model.train()
    logits = model(images)
    logits.sum().backward()
    assert all(up.weight.grad.abs().sum() > 0 for up in adapter_ups(model))


def test_lora_starts_as_the_backbone(general, batch):
    images = batch[0]
    model = build("lora", general).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.features(images), general(images), rtol=0, atol=0)
        perturb(lora_bs(model))
        assert not torch.allclose(model.features(images), general(images), atol=1e-4)


# --- LoRA merging ---------------------------------------------------------------------------------------

def test_merged_lora_gives_the_same_logits(general, batch):
    images = batch[0]
    model = build("lora", general, r=4, alpha=16).eval()
    perturb(lora_bs(model))  # B starts at zero: make the update real
    qkv = model.backbone.model.blocks[0].attn.qkv.base_layer.weight
    frozen_qkv = qkv.detach().clone()
    with torch.no_grad():
        unmerged = model(images)
        assert not torch.allclose(unmerged, build("lora", general, r=4, alpha=16).eval()(images), atol=1e-4)
        assert not model.merged
        model.merge()
        assert model.merged and not torch.allclose(qkv, frozen_qkv)
        torch.testing.assert_close(model(images), unmerged, rtol=0, atol=1e-5)
        model.merge()  # merging twice does not add the update twice
        torch.testing.assert_close(model(images), unmerged, rtol=0, atol=1e-5)


def test_unmerge_restores_the_frozen_weights(general, batch):
    images = batch[0]
    model = build("lora", general).eval()
    perturb(lora_bs(model))
    qkv = model.backbone.model.blocks[2].attn.qkv.base_layer.weight
    frozen_qkv = qkv.detach().clone()
    with torch.no_grad():
        before = model(images)
        model.merge()
        model.unmerge()
        torch.testing.assert_close(qkv, frozen_qkv, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(images), before, rtol=0, atol=1e-5)


# --- the caller's backbone ----------------------------------------------------------------------------------

def test_the_backbone_passed_in_is_never_modified(general, batch):
    images, labels = batch
    before = {k: v.clone() for k, v in general.state_dict().items()}
    for name in ("adapter-general", "adapter-medical", "lora"):
        model = build(name, general).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        F.cross_entropy(model(images), labels).backward()
        opt.step()
        if name == "lora":
            model.merge()
    after = general.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert all(type(blk.mlp) is Mlp for blk in general.model.blocks)
    assert all(type(blk.attn.qkv) is torch.nn.Linear for blk in general.model.blocks)
    assert not any(p.requires_grad for p in general.parameters())


# --- through the real engine -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adapter-general", "adapter-medical", "lora"])
def test_train_run_end_to_end(small_task, tmp_path, batch, name):
    out = tmp_path / "run"
    metrics = train_run(task=str(small_task), method=name, general_spec="tiny-general",
                        medical_spec="tiny-medical", out=out, train_cfg=TrainConfig(epochs=1, batch_size=32, seed=0),
                        options={}, on_note=lambda m: None)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["split_sizes"] == {"train": 64, "val": 16, "test": 16}
    assert metrics["params_ratio"] > 1.0
    # the saved run loads back onto a fresh copy of the right backbone and reproduces the test accuracy
    model, config, _ = load_run(out)
    assert config["method_config"]["backbone"] == ("medical" if name == "adapter-medical" else "general")
    assert model.backbone.spec == ("tiny-medical" if name == "adapter-medical" else "tiny-general")
    test = load_task(str(small_task), seed=0, image_size=28).test
    with torch.no_grad():
        predictions = model(torch.from_numpy(test.images).permute(0, 3, 1, 2)).argmax(1).numpy()
    assert float((predictions == test.labels).mean()) == pytest.approx(metrics["accuracy"], abs=1e-6)
