"""The data check runs before training: a defective task stops the run before any output exists; ``--dedupe``
drops the evaluation images that leak instead, and records how many."""
import json
import os
import subprocess
import sys

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
    with pytest.raises(MedvtabError, match="duplicates across splits.*--dedupe .*--no-check"):
        run(leaky_task, tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_no_check_trains_anyway_and_says_so(leaky_task, tmp_path):
    metrics = run(leaky_task, tmp_path / "run", run_check=False)
    assert metrics["data_checked"] is False and 0 <= metrics["accuracy"] <= 1


def test_official_split_duplicates_are_warnings_in_the_run(tmp_path):
    metrics = run("pneumoniamnist", tmp_path / "run", train_size=40)
    assert any("source's own split" in w for w in metrics["warnings"])


def test_dedupe_drops_the_leaked_test_image_records_it_and_trains(leaky_task, tmp_path):
    notes = []
    metrics = train_run(str(leaky_task), "linear", "tiny-general", None, tmp_path / "run",
                        TrainConfig(epochs=1, batch_size=16), on_note=notes.append, dedupe=True)
    assert metrics["dedupe"] == {"val": 0, "test": 1} and metrics["data_checked"] is True
    assert metrics["split_sizes"] == {"train": 48, "val": 16, "test": 15}
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["dedupe"] == {"val": 0, "test": 1}
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    test_rows = splits["splits"]["test"]["indices"]
    assert len(test_rows) == 15 and 48 + 16 not in test_rows  # the pool position of the leaked copy (test[0])
    assert "note: --dedupe dropped 1 test image identical to images of a split fitted on or selected with" in notes


def test_dedupe_of_clean_data_drops_nothing_and_says_so(tmp_path):
    notes = []
    metrics = train_run("breastmnist", "linear", "tiny-general", None, tmp_path / "run",
                        TrainConfig(epochs=1, batch_size=16), on_note=notes.append, train_size=40, dedupe=True)
    assert metrics["dedupe"] == {"val": 0, "test": 0}
    assert any("--dedupe: no evaluation image" in n for n in notes)


def test_without_dedupe_nothing_is_recorded(tmp_path):
    metrics = run("breastmnist", tmp_path / "run", train_size=40)
    assert "dedupe" not in metrics
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dedupe"] is None


def test_train_cli_dedupe(leaky_task, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "medvtab.cli", "train", "--task", str(leaky_task), "--method",
                           "linear", "--epochs", "1", "--batch-size", "16", "--dedupe", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "--dedupe dropped 1 test image" in proc.stdout + proc.stderr
    assert json.loads((out / "metrics.json").read_text())["dedupe"] == {"val": 0, "test": 1}
