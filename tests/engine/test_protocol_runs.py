"""train_run with evaluation protocols, end to end on real data with the tiny backbones and a linear probe:
patient-ood on the Kermany chest X-rays (seen and unseen test sets, splits.json), fewshot on the bundled
PneumoniaMNIST, and option errors raised before any run directory exists."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medvtab.data.protocols import SPLITS_FILE, resplit
from medvtab.engine import rundir
from medvtab.engine.loop import TrainConfig
from medvtab.engine.run import train_run
from medvtab.errors import MedvtabError

KERMANY = Path(__file__).resolve().parents[3] / "shared" / "data" / "kermany_cxr" / "kermany_cxr_28.npz"
SUMMARY = {"accuracy", "balanced_accuracy", "macro_f1", "auroc", "images", "patients"}


def run(task: str, out: Path, **kwargs) -> dict:
    return train_run(task, "linear", "tiny-general", "tiny-medical", out,
                     TrainConfig(epochs=1, batch_size=32, seed=0), on_note=lambda message: None, **kwargs)


@pytest.fixture(scope="module")
def ood_run(tmp_path_factory):
    if not KERMANY.is_file():
        pytest.skip(f"{KERMANY}: ../shared/data absent")
    out = tmp_path_factory.mktemp("ood") / "run"
    metrics = run(str(KERMANY), out, protocol="patient-ood", seen=40, unseen=25, train_size=48)
    return out, metrics


def test_patient_ood_run_reports_seen_and_unseen(ood_run):
    out, metrics = ood_run
    assert json.loads((out / rundir.METRICS).read_text()) == json.loads(json.dumps(metrics))
    assert metrics["protocol"] == "patient-ood"
    assert set(metrics["seen"]) == SUMMARY and set(metrics["unseen"]) == SUMMARY
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "auroc"):
        assert metrics["seen"][key] == metrics[key]  # the usual keys are the seen test's
        assert 0.0 <= metrics["unseen"][key] <= 1.0
    assert metrics["unseen"]["patients"] == 25 and metrics["split_patients"]["unseen"] == 25
    assert metrics["seen"]["images"] == metrics["split_sizes"]["test"]
    assert metrics["unseen"]["images"] == metrics["split_sizes"]["unseen"]
    assert metrics["split_sizes"]["train"] == 48  # --train-size applies after the protocol
    assert set(metrics["split_patients"]) == {"train", "val", "test", "unseen"}


def test_patient_ood_run_writes_patient_disjoint_splits(ood_run):
    out, metrics = ood_run
    assert sorted(p.name for p in out.iterdir()) == sorted([rundir.ADAPTER, rundir.CONFIG, rundir.LOG,
                                                            rundir.METRICS, rundir.PREDICTIONS, SPLITS_FILE])
    record = json.loads((out / SPLITS_FILE).read_text())
    assert record["protocol"] == {"name": "patient-ood", "seen": 40, "unseen": 25}
    with np.load(KERMANY) as npz:
        ids = npz["patient_ids"].astype(str)
    by_split = {name: set(ids[row["indices"]]) for name, row in record["splits"].items()}
    assert not (by_split["train"] | by_split["val"]) & by_split["unseen"]
    assert len(by_split["unseen"]) == 25
    for name, row in record["splits"].items():
        assert row["images"] == len(row["indices"]) == metrics["split_sizes"][name]
        assert row["patients"] == len(by_split[name]) == metrics["split_patients"][name]
    config = json.loads((out / rundir.CONFIG).read_text())
    assert config["protocol"] == record["protocol"] and config["splits_file"] == SPLITS_FILE
    # the record rebuilds the very same unseen test set
    back = resplit(str(KERMANY), record, image_size=28)
    assert sorted(set(back.extra_tests["unseen"].patient_ids)) == sorted(by_split["unseen"])
    predictions = rundir.read_predictions(out / rundir.PREDICTIONS)
    for name, split in (("val", back.val), ("test", back.test), ("unseen", back.extra_tests["unseen"])):
        assert np.array_equal(predictions[f"{name}_labels"], split.y)
        assert predictions[f"{name}_probs"].shape == (len(split), 2)


def test_fewshot_run_sizes_and_splits_file(tmp_path):
    metrics = run("pneumoniamnist", tmp_path / "run", protocol="fewshot", shots=6)
    assert metrics["split_sizes"] == {"train": 12, "val": 524, "test": 624}
    assert "seen" not in metrics and "unseen" not in metrics and "split_patients" not in metrics
    record = json.loads((tmp_path / "run" / SPLITS_FILE).read_text())
    assert record["splits"]["train"]["images"] == 12 and "patients" not in record["splits"]["train"]
    assert record["pool"]["order"] == ["train", "val", "test"]


@pytest.mark.parametrize("kwargs,match", [
    ({"seen": 3}, "'--seen'"),
    ({"protocol": "fewshot"}, "--train-fraction"),
    ({"protocol": "patient-ood", "seen": 3, "unseen": 2}, "no patient ids"),
    ({"protocol": "vtab1k", "train_size": 40}, "'--train-size'"),
])
def test_protocol_errors_leave_no_run_directory(tmp_path, kwargs, match):
    with pytest.raises(MedvtabError, match=match):
        run("pneumoniamnist", tmp_path / "run", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_train_help_lists_the_protocol_options():
    from typer.testing import CliRunner

    from medvtab.cli import app

    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in ("--protocol", "--train-fraction", "--shots", "--seen", "--unseen", "--data-root"):
        assert option in result.output, option
