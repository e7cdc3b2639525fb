"""The data check runs before training: a defective task stops the run before any output exists."""
import numpy as np
import pytest

from medvtab.data.loading import bundled_path
from medvtab.engine.loop import TrainConfig
from medvtab.engine.run import train_run
from medvtab.errors import MedvtabError


@pytest.fixture(scope="module")
def leaky_task(tmp_path_factory):
    """Real PneumoniaMNIST images, with one training image copied into the test split (a leak)."""
    arrays = {}
    with np.load(bundled_path("pneumoniamnist")) as npz:
        for split, n in (("train", 24), ("val", 8), ("test", 8)):
            labels = npz[f"{split}_labels"].reshape(-1)
            idx = np.concatenate([np.flatnonzero(labels == c)[:n] for c in (0, 1)])
            arrays[f"{split}_images"], arrays[f"{split}_labels"] = npz[f"{split}_images"][idx], labels[idx]
    arrays["test_images"][0] = arrays["train_images"][0]
    arrays["test_labels"][0] = arrays["train_labels"][0]
    path = tmp_path_factory.mktemp("task") / "leaky.npz"
    np.savez(path, **arrays)
    return path


def run(task, out, **kwargs):
    return train_run(str(task), "linear", "tiny-general", None, out, TrainConfig(epochs=1, batch_size=16),
                     on_note=lambda m: None, **kwargs)


def test_a_duplicate_across_splits_stops_the_run_before_any_output(leaky_task, tmp_path):
    with pytest.raises(MedvtabError, match="duplicates across splits.*--no-check"):
        run(leaky_task, tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_no_check_trains_anyway_and_says_so(leaky_task, tmp_path):
    metrics = run(leaky_task, tmp_path / "run", run_check=False)
    assert metrics["data_checked"] is False and 0 <= metrics["accuracy"] <= 1


def test_official_split_duplicates_are_warnings_in_the_run(tmp_path):
    metrics = run("pneumoniamnist", tmp_path / "run", train_size=40)
    assert any("source's own split" in w for w in metrics["warnings"])
