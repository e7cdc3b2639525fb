"""train_run in-process on a small slice of the real bundled data: the same seed gives the same run, and its
predictions are stored."""
import numpy as np
import pytest
import torch

from medvtab.data import load_task
from medvtab.engine import rundir
from medvtab.engine.loop import TrainConfig
from medvtab.engine.metrics import classification_metrics, selection_score
from medvtab.engine.run import train_run


@pytest.fixture(scope="module")
def runs(small_task, tmp_path_factory, one_thread):
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        metrics = train_run(str(small_task), "dynamer", "tiny-general", "tiny-medical", base / name,
                            TrainConfig(epochs=1, batch_size=32, seed=seed), train_size=48,
                            on_note=lambda message: None)
        out[name] = (metrics, rundir.read_tensors(base / name / rundir.ADAPTER))
    out["dir"] = base / "a"
    return out


def test_runs_use_the_small_task(runs):
    metrics, _ = runs["a"]
    assert metrics["split_sizes"] == {"train": 48, "val": 16, "test": 16}
    assert metrics["seed"] == 0 and runs["c"][0]["seed"] == 1


def test_same_seed_same_metrics(runs):
    (a, _), (b, _) = runs["a"], runs["b"]
    for key in ("accuracy", "auroc", "per_class_recall", "balanced_accuracy", "macro_f1", "routing"):
        assert a[key] == b[key], key


def test_same_seed_same_adapter_weights(runs):
    (_, a), (_, b) = runs["a"], runs["b"]
    assert set(a) == set(b) and a
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_different_seed_different_adapter_weights(runs):
    (_, a), (_, c) = runs["a"], runs["c"]
    assert set(a) == set(c)
    differ = [key for key in a if not torch.equal(a[key], c[key])]
    # every tensor with a random init or a gradient differs; the gate/bias zero-inits still get trained
    assert len(differ) > len(a) // 2, sorted(set(a) - set(differ))


def test_predictions_of_the_best_epoch_and_the_test_set(runs, small_task):
    predictions = rundir.read_predictions(runs["dir"] / rundir.PREDICTIONS)  # np.load(allow_pickle=False)
    assert set(predictions) == {"val_probs", "val_labels", "test_probs", "test_labels"}
    data = load_task(str(small_task))
    for name, split in (("val", data.val), ("test", data.test)):
        probs, labels = predictions[f"{name}_probs"], predictions[f"{name}_labels"]
        assert probs.dtype == np.float32 and probs.shape == (len(split), data.num_classes)
        assert labels.dtype == np.int64 and np.array_equal(labels, split.y)
        assert np.allclose(probs.sum(1), 1, atol=1e-5)
    metrics, _ = runs["a"]
    assert classification_metrics(predictions["test_labels"], predictions["test_probs"])["accuracy"] == \
        metrics["accuracy"]
    log = np.genfromtxt(runs["dir"] / rundir.LOG, delimiter=",", names=True)
    best = np.atleast_1d(log["val_accuracy"])[metrics["best_epoch"] - 1]
    assert selection_score(predictions["val_labels"], predictions["val_probs"]) == pytest.approx(best, abs=1e-6)
