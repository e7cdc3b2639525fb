"""The Python API (``medvtab.load_backbones`` ... ``medvtab.load``) on the bundled pneumoniamnist: backbones from
specs and from a timm model object, one epoch of training, metrics, and saved models that load back exactly."""
import subprocess
import sys

import pytest
import timm
import torch

import medvtab
from medvtab.engine.run import load_run, train_run
from medvtab.errors import MedvtabError

CONFIG = dict(epochs=1, batch_size=32)


@pytest.fixture(scope="module")
def task():
    return medvtab.load_task("pneumoniamnist", train_size=64)


def logits(model, split) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return model(torch.from_numpy(split.images[:32]).permute(0, 3, 1, 2))


def test_import_medvtab_stays_light():
    code = "import sys, medvtab; print('torch' in sys.modules, 'create_model' in dir(medvtab))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]  # torch loads on first use of an API name


def test_the_api_is_medvtab_train(task, tmp_path):
    """From specs: the same seed, options and data give the metrics `medvtab train` gives; saved, the model loads
    back through the API and through the run-directory reader `medvtab predict` uses, with identical logits."""
    general, medical = medvtab.load_backbones("tiny-general", "tiny-medical")
    model = medvtab.create_model("dynamer", general, medical, num_classes=task.num_classes, keep_ratio=0.5)
    medvtab.fit(model, task.train, task.val, medvtab.TrainConfig(**CONFIG))  # lr: the method's default
    metrics = medvtab.evaluate(model, task.test)

    run = train_run("pneumoniamnist", "dynamer", "tiny-general", "tiny-medical", tmp_path / "cli",
                    medvtab.TrainConfig(**CONFIG), {"keep_ratio": 0.5}, train_size=64, on_note=lambda message: None)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "auroc"):
        assert metrics[key] == run[key], key

    medvtab.save(model, tmp_path / "api", class_names=task.class_names)
    want = logits(model, task.test)
    assert torch.equal(logits(medvtab.load(tmp_path / "api"), task.test), want)
    from_run_dir, config, class_names = load_run(tmp_path / "api")
    assert torch.equal(logits(from_run_dir, task.test), want)
    assert class_names == task.class_names and config["task_type"] == "multi-class"


def test_a_timm_model_object_as_a_backbone(task, tmp_path):
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=28, patch_size=4,
                            embed_dim=96, depth=2, num_heads=3)
    general, _ = medvtab.load_backbones(vit)
    assert general.spec == "object:vit_tiny_patch16_224" and general.input_size == 28 and general.depth == 2
    model = medvtab.create_model("adapter-general", vit, num_classes=task.num_classes)
    medvtab.fit(model, task.train, task.val, medvtab.TrainConfig(**CONFIG))
    assert 0.0 <= medvtab.evaluate(model, task.test)["auroc"] <= 1.0

    medvtab.save(model, tmp_path / "run")
    with pytest.raises(MedvtabError, match="was a Python object when the model was saved; pass it again"):
        medvtab.load(tmp_path / "run")
    assert torch.equal(logits(medvtab.load(tmp_path / "run", general=vit), task.test), logits(model, task.test))


def test_user_errors(task):
    with pytest.raises(MedvtabError, match="method 'dynamer' option 'keep_ratio'"):
        medvtab.create_model("dynamer", "tiny-general", "tiny-medical", num_classes=2, keep_ratio=0)
    with pytest.raises(MedvtabError, match="needs a medical backbone"):
        medvtab.create_model("dynamer", "tiny-general", num_classes=2)
    with pytest.raises(MedvtabError, match="no recipe"):
        medvtab.save(torch.nn.Linear(2, 2), "unused")
