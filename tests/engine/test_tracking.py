"""Optional tracking through the real libraries: TensorBoard event files and an MLflow file store."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from medvtab.cli import app


def test_tensorboard_and_mlflow_log_the_run(small_task, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="the 'tracking' extra is not installed")
    # a local file store (a server or database URI in real use); MLflow 3 asks for this opt-in
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = tmp_path / "mlruns"
    out = tmp_path / "run"
    got = CliRunner().invoke(app, ["train", "--task", str(small_task), "--method", "linear", "--epochs", "2",
                                   "--out", str(out), "--tensorboard", str(tmp_path / "tb"),
                                   "--mlflow", store.as_uri()])
    assert got.exit_code == 0, got.output
    metrics = json.loads((out / "metrics.json").read_text())

    events = EventAccumulator(str(tmp_path / "tb" / "run"))
    events.Reload()
    losses = events.Scalars("train/train_loss")
    assert [e.step for e in losses] == [1, 2]

    mlflow.set_tracking_uri(store.as_uri())
    (run,) = mlflow.search_runs(experiment_names=["medvtab"], output_format="list")
    assert run.data.params["method"] == "linear" and run.data.params["train.epochs"] == "2"
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.json", "config.json"}


def test_bad_mlflow_uri_is_a_one_line_error(small_task, tmp_path):
    pytest.importorskip("mlflow", reason="the 'tracking' extra is not installed")
    got = CliRunner().invoke(app, ["train", "--task", str(small_task), "--method", "linear", "--epochs", "1",
                                   "--out", str(tmp_path / "run"), "--mlflow", "nosuchscheme://x"])
    assert got.exit_code != 0
    assert not (tmp_path / "run").exists()
