"""Faults during training: a run killed by SIGKILL right after an epoch checkpoint resumes from it to the
metrics and predictions of an uninterrupted run (exactly, on CPU, whatever the loader's worker count); a non-finite loss stops the run with the epoch
named and the checkpoint kept, or is skipped and counted with --skip-nonfinite; checkpoints never unpickle code."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from medvtab.engine import rundir
from medvtab.engine.state import load_checkpoint
from medvtab.errors import MedvtabError

TRAIN = [sys.executable, "-m", "medvtab.cli", "train", "--method", "dynamer", "--epochs", "5", "--batch-size", "8",
         "--patience", "5", "--seed", "1"]
# `medvtab ARGS` that kills itself (SIGKILL: no clean-up runs) right after writing epoch 1's checkpoint
KILLED_AFTER_EPOCH_1 = [sys.executable, "-c", """
import os, signal, sys
from medvtab.cli import main
from medvtab.engine.state import TrainState
save = TrainState.save
def save_then_die(state, path):
    save(state, path)
    if state.epoch == 1:
        os.kill(os.getpid(), signal.SIGKILL)
TrainState.save = save_then_die
sys.argv[0] = "medvtab"
main()
"""]
RESULT_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "best_epoch", "epochs_run", "per_class_recall",
               "routing")


def log_rows(run) -> list[dict]:
    with open(run / "log.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_sigkill_after_a_checkpoint_then_resume_gives_identical_metrics(small_task, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--task", str(small_task)]
    whole = tmp_path / "whole"
    done = subprocess.run(TRAIN + args + ["--out", str(whole)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]

    killed = tmp_path / "killed"  # its first epoch read by 2 loader workers: the worker count changes nothing
    got = subprocess.run(KILLED_AFTER_EPOCH_1 + TRAIN[3:] + args + ["--out", str(killed), "--num-workers", "2"],
                         capture_output=True, text=True, env=env)
    assert got.returncode == -9, got.stderr[-2000:]
    assert not (killed / "metrics.json").exists()
    assert load_checkpoint(killed / "checkpoint.pt")["epoch"] == 1

    # the same command without --resume refuses to overwrite the unfinished run
    again = subprocess.run(TRAIN + args + ["--out", str(killed)], capture_output=True, text=True, env=env)
    assert again.returncode == 2 and f"--resume {killed}" in again.stderr

    resumed = subprocess.run(TRAIN + args + ["--out", str(killed), "--resume", str(killed)], capture_output=True,
                             text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert {k: a[k] for k in RESULT_KEYS} == {k: b[k] for k in RESULT_KEYS}
    assert log_rows(whole) == log_rows(killed)
    pa, pb = (rundir.read_predictions(run / rundir.PREDICTIONS) for run in (whole, killed))
    assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)  # val: the best epoch's
    assert not (killed / "checkpoint.pt").exists()  # removed once the run is finished
    # a finished run has nothing to resume
    done = subprocess.run(TRAIN + args + ["--resume", str(killed)], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "has finished" in done.stderr


def test_resume_with_other_options_is_refused(small_task, tmp_path):
    run = tmp_path / "run"
    subprocess.run(TRAIN + ["--task", str(small_task), "--out", str(run), "--epochs", "1"], check=True,
                   capture_output=True)
    (run / "metrics.json").unlink()  # pretend it was killed after epoch 1 (the checkpoint is gone too)
    got = subprocess.run(TRAIN + ["--task", str(small_task), "--resume", str(run)], capture_output=True, text=True)
    assert got.returncode == 2 and "no checkpoint.pt to resume from" in got.stderr


def test_non_finite_loss_stops_the_run_with_the_epoch_named(small_task, tmp_path):
    """A learning rate of 1e30 blows the weights up: the loss (or the validation output) turns non-finite."""
    base = [sys.executable, "-m", "medvtab.cli", "train", "--task", str(small_task), "--method", "linear",
            "--batch-size", "8", "--epochs", "3", "--lr", "1e30"]
    got = subprocess.run(base + ["--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert got.returncode == 2, got.stderr[-2000:]
    message = got.stderr.strip().splitlines()[-1]
    assert message.startswith("error: non-finite") and "at epoch 1" in message, message
    assert not (tmp_path / "bad" / "metrics.json").exists()


def test_skip_nonfinite_skips_and_counts_bad_batches(small_task, tmp_path, monkeypatch):
    """Fault injection: the 3rd and 5th training forward passes return NaN logits (as a corrupt batch would)."""
    from medvtab.engine import run as run_module
    from medvtab.engine.loop import TrainConfig
    from medvtab.engine.run import train_run

    built = run_module.build_model
    calls = {"n": 0}

    def build_with_fault(*args, **kwargs):
        model = built(*args, **kwargs)

        def poison(module, inputs, output):
            if module.training:
                calls["n"] += 1
                if calls["n"] in (3, 5):
                    return output * float("nan")
            return output
        model.head.register_forward_hook(poison)
        return model

    monkeypatch.setattr(run_module, "build_model", build_with_fault)
    cfg = TrainConfig(epochs=2, batch_size=8, seed=0)
    with pytest.raises(MedvtabError, match="non-finite training loss .* at epoch 1, batch 3; no epoch had finished"):
        train_run(str(small_task), "adapter-medical", "tiny-general", "tiny-medical", tmp_path / "a", cfg)
    calls["n"] = 0
    metrics = train_run(str(small_task), "adapter-medical", "tiny-general", "tiny-medical", tmp_path / "b",
                        cfg.model_copy(update={"skip_nonfinite": 2}))
    assert metrics["skipped_nonfinite_batches"] == 2
    assert all(v == v for v in (metrics["accuracy"], metrics["auroc"]))  # no NaN reached the result


def test_checkpoint_loading_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": 1, "payload": Evil()}, tmp_path / "checkpoint.pt")
    with pytest.raises(MedvtabError, match="not a readable medvtab checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert not marker.exists()
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(MedvtabError, match="torn.pt: not a readable medvtab checkpoint"):
        load_checkpoint(tmp_path / "torn.pt")
