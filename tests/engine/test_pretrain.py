"""``medvtab pretrain``: a real (small) run writes a strictly loadable expert and its card; bad input stops
with a one-line ``error:`` and exit status 2.

The command runs in-process through ``medvtab.cli.main()`` (what the ``medvtab`` script runs), so its exit
status, stdout and stderr are the user's, without paying the torch import once per case.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from medvtab.backbones import load_backbone, tiny
from medvtab.data.leakage import image_digest
from medvtab.engine.pretrain import augment, batch_mixer, drop_train_duplicates, features, random_init_backbone, to_input
from medvtab.errors import MedvtabError

DATA = Path(os.environ.get("MEDVTAB_DATA", "/work/shared/data"))


@pytest.fixture(scope="module")
def pbc_subset(tmp_path_factory) -> Path:
    """320 train and 160 test images drawn at random from the real pbc_28 (all 8 classes), plus one test image
    that is a copy of a train image (the probe must drop it). Named like the source, so it is 'pbc'."""
    source = DATA / "pbc" / "pbc_28.npz"
    if not source.is_file():
        pytest.skip(f"real data file missing: {source} (set MEDVTAB_DATA to the shared data folder)")
    rng = np.random.default_rng(0)
    with np.load(source) as npz:
        train = rng.choice(len(npz["train_labels"]), 320, replace=False)
        test = rng.choice(len(npz["test_labels"]), 160, replace=False)
        arrays = {"train_images": npz["train_images"][train], "train_labels": npz["train_labels"][train],
                  "test_images": npz["test_images"][test], "test_labels": npz["test_labels"][test],
                  "class_names": npz["class_names"]}
    arrays["test_images"][0], arrays["test_labels"][0] = arrays["train_images"][5], arrays["train_labels"][5]
    path = tmp_path_factory.mktemp("pbc") / "pbc_28.npz"
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def pretrained(pbc_subset, tmp_path_factory):
    """One epoch of `medvtab pretrain` on the subset, shared by the tests below."""
    out = tmp_path_factory.mktemp("expert") / "medical.safetensors"
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = ["medvtab", "pretrain", "--data", str(pbc_subset), "--out", str(out), "--variant", "tiny-medical",
            "--epochs", "1", "--batch-size", "64", "--seed", "3"]
    from medvtab.cli import main

    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout), \
            contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exit_:
        mp.setattr(sys, "argv", argv)
        main()
    return {"out": out, "code": exit_.value.code or 0, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def test_pretrain_writes_weights_and_card(pretrained):
    assert pretrained["code"] == 0, pretrained["stderr"]
    out = pretrained["out"]
    summary = json.loads(pretrained["stdout"])
    card = json.loads(out.with_suffix(".json").read_text())
    assert summary["linear_probe"] == card["linear_probe"]
    assert card["variant"] == "tiny-medical" and card["epochs"] == 1 and card["seed"] == 3
    assert card["data"]["name"] == "pbc" and card["data"]["train_images"] == 320
    assert card["data"]["test_duplicates_of_train_dropped"] == 1  # the planted copy
    assert card["linear_probe"]["test_images"] == 159
    assert card["command"].startswith("medvtab pretrain --data ")
    assert "--variant tiny-medical --epochs 1 --seed 3 --batch-size 64" in card["command"]
    assert 0.0 <= card["linear_probe"]["pretrained_accuracy"] <= 1.0
    assert "dropped from the probe" in pretrained["stderr"] and "epoch 1/1" in pretrained["stderr"]
    md = out.with_suffix(".md").read_text()
    assert f"{card['linear_probe']['pretrained_accuracy']:.4f}" in md
    # the trunk only, exactly the tiny architecture's keys, with the data set in the metadata
    with safe_open(str(out), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert keys == set(tiny.new_model("tiny-medical").state_dict())
    assert meta[tiny.META_PRETRAINED_ON] == "pbc" and meta["medvtab.variant"] == "tiny-medical"


def test_the_file_loads_strictly_and_differs_from_random_init(pretrained, pbc_subset):
    backbone = load_backbone(f"tiny-medical@{pretrained['out']}")
    info = backbone.info
    assert not info.random_init and info.pretrained_on == ("pbc",) and info.grid == (7, 7)
    with np.load(pbc_subset) as npz:
        images = to_input(npz["test_images"][:32], 28)
    mine, random = features(backbone, images), features(random_init_backbone("tiny-medical"), images)
    assert mine.shape == random.shape == (32, 96)
    assert not np.allclose(mine, random, atol=1e-3)
    # the general stream can load it too (same architecture); a depth that the file lacks is refused
    assert load_backbone(f"tiny-general@{pretrained['out']}").info.pretrained_on == ("pbc",)
    with pytest.raises(MedvtabError, match="missing keys: blocks.4"):
        load_backbone(f"tiny-medical@{pretrained['out']}", depth=6)


def test_a_file_with_extra_keys_is_refused(pretrained, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(pretrained["out"]))
    state["head.weight"] = torch.zeros(8, 96)
    save_file(state, tmp_path / "extra.safetensors")
    with pytest.raises(MedvtabError, match="unexpected keys: head.weight"):
        load_backbone(f"tiny-medical@{tmp_path / 'extra.safetensors'}")


def test_pretrain_never_overwrites(run_medvtab, pretrained, pbc_subset):
    code, _, err = run_medvtab("pretrain", "--data", pbc_subset, "--out", pretrained["out"],
                               "--variant", "tiny-medical", "--epochs", "1")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "exists" in err


@pytest.mark.parametrize("case", ["missing", "no_train_images", "not_npz", "bad_variant", "bad_suffix", "grey_float"])
def test_bad_input_exits_2_with_one_line(run_medvtab, case, tmp_path):
    data = tmp_path / "task.npz"
    out = tmp_path / "expert.safetensors"
    variant = "tiny-medical"
    expect = {"missing": "no such file", "no_train_images": "expected keys 'train_images' and 'train_labels'",
              "not_npz": "not an .npz file", "bad_variant": "option '--variant'",
              "bad_suffix": "must be a .safetensors file", "grey_float": "'train_images' must be uint8"}[case]
    if case == "no_train_images":
        np.savez(data, images=np.zeros((4, 28, 28), np.uint8), labels=np.zeros(4, np.uint8))
    elif case == "not_npz":
        data.write_text("not a zip file")
    elif case == "grey_float":
        np.savez(data, train_images=np.zeros((4, 28, 28)), train_labels=np.arange(4) % 2)
    elif case == "bad_variant":
        variant = "tiny-huge"
    elif case == "bad_suffix":
        out = tmp_path / "expert.pth"
    code, stdout, err = run_medvtab("pretrain", "--data", data, "--out", out, "--variant", variant)
    assert code == 2, (stdout, err)
    assert err.count("\n") == 1 and err.startswith("error: ") and expect in err, err
    assert not out.exists() and not out.with_suffix(".json").exists()


# --- the pieces ---------------------------------------------------------------------------------------------

def test_duplicates_of_train_images_are_dropped_from_test():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    test_images = np.concatenate([train[[2, 7]], rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)])
    (images, labels), dropped = drop_train_duplicates((test_images, np.arange(5)), train)
    assert dropped == 2 and labels.tolist() == [2, 3, 4] and len(images) == 3
    assert len({image_digest(im) for im in train}) == 10


def test_inputs_are_area_resized_and_augmentation_keeps_shapes():
    x = np.zeros((2, 32, 32, 3), np.uint8)
    x[:, :16] = 200  # top half bright: the area filter averages the boundary row
    t = to_input(x, 28)
    assert t.shape == (2, 3, 28, 28) and t.dtype == torch.uint8
    assert t[0, 0, 0, 0] == 200 and t[0, 0, -1, 0] == 0 and 0 < t[0, 0, 13, 0] <= 200
    grey = to_input(np.zeros((3, 28, 28, 1), np.uint8), 28)
    assert grey.shape == (3, 3, 28, 28)
    g = torch.Generator().manual_seed(0)
    batch = torch.randn(16, 3, 28, 28)
    out = augment(batch, g)
    assert out.shape == batch.shape
    # every output is a shifted (possibly flipped) crop: its centre pixel exists in the input image
    for i in range(16):
        assert torch.isclose(batch[i, 0].flatten()[:, None], out[i, 0, 14, 14]).any()


def test_opt_in_regularisers_are_recorded_and_keep_the_trunk(run_medvtab, pbc_subset, tmp_path):
    """MixUp, CutMix and stochastic depth: a real epoch with all three; the card's command reproduces them and
    the file holds exactly the tiny architecture's keys (drop path adds none)."""
    out = tmp_path / "regularised.safetensors"
    code, stdout, err = run_medvtab("pretrain", "--data", pbc_subset, "--out", out, "--variant", "tiny-medical",
                                    "--epochs", "1", "--batch-size", "64", "--mixup", "0.8", "--cutmix", "1",
                                    "--drop-path", "0.1")
    assert code == 0, err
    card = json.loads(out.with_suffix(".json").read_text())
    assert (card["mixup"], card["cutmix"], card["drop_path"]) == (0.8, 1.0, 0.1)
    assert card["command"].endswith("--mixup 0.8 --cutmix 1 --drop-path 0.1")
    assert "MixUp (alpha 0.8), CutMix (alpha 1) (one of the two per batch" in card["objective"]
    with safe_open(str(out), framework="pt") as f:
        assert set(f.keys()) == set(tiny.new_model("tiny-medical").state_dict())


def test_regularisers_are_off_by_default(pretrained):
    card = json.loads(pretrained["out"].with_suffix(".json").read_text())
    assert not {"mixup", "cutmix", "drop_path"} & set(card) and "--mixup" not in card["command"]
    assert "MixUp" not in card["objective"]


def test_batch_mixer_mixes_soft_targets_and_is_none_when_off():
    assert batch_mixer(4, 0.0, 0.0) is None
    torch.manual_seed(0)
    x, y = torch.rand(8, 3, 28, 28), torch.arange(8) % 4
    for mixup, cutmix in ((0.8, 0.0), (0.0, 1.0), (0.8, 1.0)):
        mixed, target = batch_mixer(4, mixup, cutmix)(x, y)
        assert mixed.shape == x.shape and target.shape == (8, 4)
        assert torch.allclose(target.sum(1), torch.ones(8))


def test_without_flips_augmentation_only_shifts():
    """--no-flip (radiology, where left and right matter): every output is a shifted crop, never mirrored, up to
    7 px at 64 px."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.arange(64.0).expand(16, 3, 64, 64).clone()  # increases left to right
    out = augment(ramp, g, hflip=False)
    steps = out[:, 0, 32, 1:] - out[:, 0, 32, :-1]
    assert (steps[:, 10:-10] == 1).all()  # no mirrored image runs right to left
    assert (out[:, 0, 32, 32] - 32).abs().max() <= 7
    flipped = augment(ramp, torch.Generator().manual_seed(0))
    assert ((flipped[:, 0, 32, 40] - flipped[:, 0, 32, 20]) < 0).any()  # with flips some do


def test_a_radiology_expert_records_its_sources_and_no_flips(run_medvtab, pbc_subset, tmp_path):
    """tiny-radiology (64 px, 8 px patches) from a pooled file that names each image's source set: the sources go
    into the metadata the leakage guard reads and into the card; --no-flip into the card and its command."""
    with np.load(pbc_subset) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["train_source"] = np.array(["kermany-cxr", "slake"] * 160)
    data = tmp_path / "radiology_64.npz"
    np.savez(data, **arrays)
    out = tmp_path / "radiology.safetensors"
    code, _, err = run_medvtab("pretrain", "--data", data, "--out", out, "--variant", "tiny-radiology",
                               "--epochs", "1", "--batch-size", "64", "--no-flip")
    assert code == 0, err
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["architecture"]["img_size"] == 64 and card["architecture"]["patch_size"] == 8
    assert card["data"]["sources"] == ["kermany-cxr", "slake"] and card["hflip"] is False
    assert card["command"].endswith("--no-flip") and "no flips" in card["objective"]
    assert "random shifts up to 7 px" in card["objective"]
    backbone = load_backbone(f"tiny-radiology@{out}")
    assert backbone.info.pretrained_on == ("kermany-cxr", "slake") and backbone.info.num_tokens == 65
