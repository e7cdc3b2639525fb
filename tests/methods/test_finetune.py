"""linear, full and partial: parameter counts, what trains, and linear probing's feature cache."""
import numpy as np
import pytest
import torch

from medvtab.backbones import load_backbone
from medvtab.data import Split
from medvtab.engine.evaluate import backbone_features, evaluate, evaluate_features
from medvtab.engine.loop import TrainConfig, fit
from medvtab.errors import MedvtabError
from medvtab.methods import build_model, count_parameters, make_config, parameter_counts


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny-general")


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (6, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def build(name, backbone, classes=3, **options):
    torch.manual_seed(0)
    return build_model(name, make_config(name, options), backbone, None, classes)


def block_params(backbone, i):
    return sum(p.numel() for p in backbone.model.blocks[i].parameters())


def test_parameter_counts_match_closed_forms(backbone):
    d, classes = 96, 3
    head = d * classes + classes
    one = sum(p.numel() for p in backbone.parameters())
    norm = 2 * d  # final LayerNorm; fc_norm is an identity with CLS pooling
    assert count_parameters(build("linear", backbone), trainable=True) == head
    assert count_parameters(build("full", backbone), trainable=True) == one + head
    assert count_parameters(build("partial", backbone), trainable=True) == block_params(backbone, 3) + norm + head
    assert count_parameters(build("partial", backbone, blocks=2), trainable=True) == (
        block_params(backbone, 2) + block_params(backbone, 3) + norm + head)
    # "Total Params": a tuned backbone is still one backbone; only the head is added.
    for name in ("linear", "full", "partial"):
        assert parameter_counts(build(name, backbone), [backbone])["params_ratio"] == round((one + head) / one, 4)


def test_partial_rejects_more_blocks_than_the_backbone_has(backbone):
    with pytest.raises(MedvtabError, match="blocks"):
        build("partial", backbone, blocks=5)


@pytest.mark.parametrize("name", ["linear", "full", "partial"])
def test_a_step_changes_trainable_and_never_the_callers_backbone(backbone, images, name):
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = build(name, backbone).train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 2, 0, 1, 2])).backward()
    opt.step()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert all(not torch.equal(params[n], v) for n, v in trainable.items() if n.startswith("head."))
    assert any(not torch.equal(params[n], v) for n, v in trainable.items())
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in before.items())


def test_linear_cache_gives_the_same_logits_as_recomputing(backbone, images):
    model = build("linear", backbone).eval()
    with torch.no_grad():
        model.head.weight.normal_()
    images = images.permute(0, 2, 3, 1).numpy()  # a split's (N, H, W, C) array
    features = backbone_features(model, images, batch_size=4, device=torch.device("cpu"))
    labels = np.array([0, 1, 2, 0, 1, 2])
    cached = evaluate_features(model, features, labels, batch_size=4, device=torch.device("cpu"))
    recomputed = evaluate(model, images, labels, batch_size=4, device=torch.device("cpu"))
    np.testing.assert_allclose(cached.probs, recomputed.probs, rtol=0, atol=1e-6)


def test_linear_probe_computes_features_once(backbone):
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8), np.arange(40) % 2)
    model = build("linear", backbone, classes=2)
    calls = []
    handle = model.backbone.model.patch_embed.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    result = fit(model, split, split.subset(np.arange(10)), TrainConfig(epochs=4, batch_size=8, lr=1e-3))
    handle.remove()
    assert sum(calls) == 40 + 10  # train and val features, once, whatever the number of epochs
    assert len(result.history) == 4
