"""Fixtures shared across the test suite."""
import sys

import numpy as np
import pytest
import torch

from medvtab.data.loading import bundled_path
from medvtab.methods import build_model, make_config


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Single-threaded torch: on a small shared machine two OpenMP threads stall whenever a core is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pair():
    """The bundled tiny-general and tiny-medical backbones (fresh per test module: some tests change them)."""
    from medvtab.backbones import load_backbone

    return load_backbone("tiny-general"), load_backbone("tiny-medical")


@pytest.fixture
def dynamer(pair):
    """``dynamer(num_classes=3, seed=0, moved=False, backbones=pair, **options)`` -> a DynaMer model; ``moved``: its
    trainable weights moved away from the identity start (so every path matters)."""
    def build(num_classes=3, seed=0, moved=False, backbones=pair, **options):
        torch.manual_seed(seed)
        model = build_model("dynamer", make_config("dynamer", options), *backbones, num_classes)
        if moved:
            with torch.no_grad():
                for p in model.parameters():
                    if p.requires_grad:
                        p.add_(torch.randn_like(p) * 0.05)
        return model
    return build


@pytest.fixture(scope="session")
def small_task(tmp_path_factory):
    """64 train, 16 val, 16 test real PneumoniaMNIST images (the bundled copy), half of each class."""
    arrays = {}
    with np.load(bundled_path("pneumoniamnist")) as npz:
        for split, n in (("train", 32), ("val", 8), ("test", 8)):
            labels = npz[f"{split}_labels"].reshape(-1)
            idx = np.concatenate([np.flatnonzero(labels == c)[:n] for c in (0, 1)])
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = npz[f"{split}_images"][idx], labels[idx]
    path = tmp_path_factory.mktemp("task") / "small.npz"
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="session")
def vitb_checkpoints(tmp_path_factory):
    """Depth-2 ViT-B checkpoints from random weights in the real layouts: DINOv2 in Meta's hub layout
    (.safetensors) and LVM-Med's SAM encoder (.pth, ``mlp.lin*``, random relative-position tables, which are
    zeros at init and would hide bugs). Returns ``{"dinov2": path, "lvmmed": path}``."""
    import timm
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("vitb")
    dino = timm.create_model("vit_base_patch14_dinov2", num_classes=0, depth=2).state_dict()
    dino["mask_token"] = torch.zeros(1, 768)
    save_file({k: v.contiguous() for k, v in dino.items()}, root / "dinov2.safetensors")
    sam = timm.create_model("samvit_base_patch16", num_classes=0, depth=2, global_attn_indexes=(1,)).state_dict()
    sam = {k.replace("mlp.fc", "mlp.lin"): v for k, v in sam.items() if not k.startswith("head")}
    for k, v in sam.items():
        if "rel_pos" in k:
            v.normal_(std=0.02)
    torch.save(sam, root / "lvmmed_vit.pth")
    return {"dinov2": root / "dinov2.safetensors", "lvmmed": root / "lvmmed_vit.pth"}


@pytest.fixture
def run_medvtab(monkeypatch, capsys):
    """``run_medvtab(*args)``: ``medvtab ARGS`` in this process through the real entry point -> (exit status,
    stdout, stderr)."""
    from medvtab.cli import main

    def run(*args) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["medvtab", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        out, err = capsys.readouterr()
        return exit_info.value.code or 0, out, err
    return run


@pytest.fixture(scope="session")
def shared_vqa_data():
    """Skips, with the reason shown, where the shared MedVQA sets (../shared/vqa) are absent."""
    from medvtab.errors import MedvtabError
    from medvtab.vqa import data as vqa_data

    try:
        vqa_data.vqa_root()
        vqa_data.load_vqa("vqa-rad", "test")
    except MedvtabError as err:
        pytest.skip(f"shared MedVQA data not available ({err})")
