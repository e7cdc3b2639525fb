"""The bundled tiny experts: they load strictly, carry what they were pre-trained on (for the leakage guard),
their cards agree with the files, and they beat their random-init twins on a quick linear probe."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medvtab.backbones import load_backbone, tiny
from medvtab.data.leakage import leakage_warnings
from medvtab.engine.pretrain import (drop_train_duplicates, input_size, linear_probe, random_init_backbone,
                                     sha256, to_input)
from medvtab.errors import MedvtabError

DATA = Path(os.environ.get("MEDVTAB_DATA", "/work/shared/data"))
EXPERTS = Path(tiny.bundled_weights("tiny-general")).parent
SOURCES = {"tiny-general": "cifar10/cifar10_32.npz", "tiny-medical": "pbc/pbc_28.npz"}
# The card's full linear probe must not fall below these: issue 18 asks for 0.60 (tiny-general) and 0.93
# (tiny-medical); tiny-radiology's is its own held-out split (Kermany patients, SLAKE validation images, VQA-RAD).
PROBE_FLOORS = {"tiny-general": 0.60, "tiny-medical": 0.93, "tiny-radiology": 0.60}
SHAPES = {"tiny-radiology": (64, (8, 8), 96, 4, 65)}  # (input, grid, width, depth, tokens); others: 28 px


def card(variant: str) -> dict:
    return json.loads((EXPERTS / f"{variant}.json").read_text())


@pytest.mark.parametrize("variant", tiny.VARIANTS)
def test_bundled_expert_loads_pretrained(variant):
    info = load_backbone(variant).info
    assert not info.random_init
    assert info.pretrained_on == tiny.PRETRAINED_ON[variant]
    shape = SHAPES.get(variant, (28, (7, 7), 96, 4, 50))
    assert (info.input_size, info.grid, info.width, info.depth, info.num_tokens) == shape
    weights = load_file(str(tiny.bundled_weights(variant)))
    assert set(weights) == set(tiny.new_model(variant).state_dict())  # the trunk only, no head
    assert all(v.dtype == torch.float32 for v in weights.values())


@pytest.mark.parametrize("variant", tiny.VARIANTS)
def test_card_matches_the_file_and_the_model_card(variant):
    c = card(variant)
    assert c["variant"] == variant and c["file"] == f"{variant}.safetensors"
    assert c["file_sha256"] == sha256(tiny.bundled_weights(variant))
    assert tuple(c["data"].get("sources") or [c["data"]["name"]]) == tiny.PRETRAINED_ON[variant]
    assert c["architecture"]["img_size"] == input_size(variant)
    assert c["command"].startswith("medvtab pretrain --data ") and f"--variant {variant}" in c["command"]
    p = c["linear_probe"]
    assert p["pretrained_accuracy"] > p["random_init_accuracy"] + 0.10
    assert p["pretrained_accuracy"] >= PROBE_FLOORS[variant], p
    text = (EXPERTS / "MODEL_CARD.md").read_text()
    section = text[text.index(f"## `{variant}`"):]
    for number in (f"{p['pretrained_accuracy']:.4f}", f"{p['random_init_accuracy']:.4f}", c["command"],
                   str(p["test_images"])):
        assert number in section, number


def test_the_two_experts_differ_and_the_twins_are_seeded():
    general, medical = load_backbone("tiny-general"), load_backbone("tiny-medical")
    x = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
    with torch.inference_mode():
        assert not torch.allclose(general(x), medical(x))
        twin = random_init_backbone("tiny-medical")
        assert torch.equal(twin(x), random_init_backbone("tiny-medical")(x))
        assert not torch.allclose(twin(x), medical(x))


def test_overrides_keep_pretrained_weights():
    full = load_backbone("tiny-medical")
    shallow = load_backbone("tiny-medical", depth=2)
    assert shallow.depth == 2 and not shallow.random_init
    for k, v in shallow.model.state_dict().items():
        assert torch.equal(v, full.model.state_dict()[k]), k
    wide = load_backbone("tiny-general", img_size=32)
    assert wide.info.grid == (8, 8) and wide.model.pos_embed.shape == (1, 65, 96)


def test_leakage_guard_knows_what_the_experts_saw():
    pairs = [(spec, load_backbone(spec).pretrained_on) for spec in ("tiny-general", "tiny-medical")]
    (msg,) = leakage_warnings("pbc", pairs)
    assert "tiny-medical" in msg and "pbc itself" in msg
    assert leakage_warnings("pneumoniamnist", pairs) == []
    (msg,) = leakage_warnings("pneumoniamnist", [("tiny-radiology", load_backbone("tiny-radiology").pretrained_on)])
    assert "kermany-cxr, which shares source images with pneumoniamnist" in msg


def test_a_missing_or_foreign_file_is_refused(tmp_path):
    with pytest.raises(MedvtabError, match="no such checkpoint file"):
        load_backbone(f"tiny-medical@{tmp_path / 'missing.safetensors'}")
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(MedvtabError, match="missing keys"):
        load_backbone(f"tiny-general@{tmp_path / 'foreign.safetensors'}")


def _subset(variant: str, n_train: int, n_test: int):
    source = DATA / SOURCES[variant]
    if not source.is_file():
        pytest.skip(f"real data file missing: {source} (set MEDVTAB_DATA to the shared data folder)")
    rng = np.random.default_rng(0)
    with np.load(source) as npz:
        train_i = rng.choice(len(npz["train_labels"]), n_train, replace=False)
        train = npz["train_images"][train_i], npz["train_labels"].reshape(-1)[train_i]
        test, _ = drop_train_duplicates((npz["test_images"], npz["test_labels"].reshape(-1)), npz["train_images"])
    test_i = rng.choice(len(test[1]), n_test, replace=False)
    size = input_size(variant)
    return (to_input(train[0], size), train[1]), (to_input(test[0][test_i], size), test[1][test_i])


@pytest.mark.parametrize("variant", SOURCES)  # tiny-radiology's: tests/vqa/test_radiology.py, on a rebuilt set
def test_bundled_experts_beat_random_init_on_a_quick_probe(variant):
    """The card's probe on 1000 train / 500 held-out test images of the expert's own data set (test images
    that duplicate a train image dropped): pre-training is worth more than 10 points (at the time of writing:
    tiny-general 0.528 vs 0.290, tiny-medical 0.922 vs 0.646)."""
    train, test = _subset(variant, 1000, 500)
    pretrained = linear_probe(load_backbone(variant), train, test)
    random = linear_probe(random_init_backbone(variant), train, test)
    assert pretrained > random + 0.10, (pretrained, random)
