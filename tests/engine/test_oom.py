"""CUDA out of memory, simulated on the CPU at the true boundary: the backbone's patch embedding raises
``torch.OutOfMemoryError`` (what PyTorch's CUDA allocator raises) whenever it is given more images than the
"device" fits. Without --auto-batch the run stops with one line naming the batch size to try, the last epoch
checkpoint kept; with it the batch size is halved, recorded, and the run ends exactly as a run started at the
smaller batch size (training OOM in epoch 1), or as an unconstrained run (evaluation OOM)."""
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
from medvtab.engine import run as run_module
from medvtab.engine.batches import BatchSizes
from medvtab.engine.evaluate import evaluate
from medvtab.engine.loop import TrainConfig
from medvtab.engine.state import load_checkpoint
from medvtab.engine.run import train_run
from medvtab.errors import MedvtabError

METHOD = "adapter-medical"  # one tiny backbone, which runs in every training step (no feature cache)
RESULT_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "best_epoch", "epochs_run", "per_class_recall",
               "routing")
TRAIN_REDUCTIONS = [{"epoch": 1, "phase": "train", "from": 32, "to": 16},
                    {"epoch": 1, "phase": "train", "from": 16, "to": 8}]


class Interrupted(Exception):
    pass


class SmallDevice:
    """Models built while installed run out of memory on training batches of more than ``fits["train"]``
    images and evaluation batches (under inference mode) of more than ``fits["eval"]`` (None: no limit);
    ``seen`` lists every (phase, batch size) that reached the backbone."""

    def __init__(self, monkeypatch, train: int | None = None, eval: int | None = None):
        self.fits, self.seen = {"train": train, "eval": eval}, []
        built = run_module.build_model

        def build(*args, **kwargs):
            model = built(*args, **kwargs)
            model.backbone.model.patch_embed.register_forward_pre_hook(self.check)
            return model
        monkeypatch.setattr(run_module, "build_model", build)

    def check(self, module, args):
        phase, n = "eval" if torch.is_inference_mode_enabled() else "train", args[0].shape[0]
        self.seen.append((phase, n))
        if self.fits[phase] is not None and n > self.fits[phase]:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {n * 24} MiB")


def log_rows(run) -> list[dict]:
    with open(run / rundir.LOG, newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


# Runs compared here evaluate (and linear computes its features) at different batch sizes, whose CPU kernels may
# round differently in the last bits (Intel MKL does, AMD's run did not): floats are compared to this tolerance.
TOL = {"rel": 1e-5, "abs": 1e-6}


def close(a, b) -> bool:
    """Equal structures; numbers (also numeric strings of the CSV log) within ``TOL``."""
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    try:
        return float(a) == pytest.approx(float(b), **TOL)
    except (TypeError, ValueError):
        return a == b


def same_run(a_dir, a: dict, b_dir, b: dict) -> None:
    assert close({k: a[k] for k in RESULT_KEYS}, {k: b[k] for k in RESULT_KEYS})
    assert close(log_rows(a_dir), log_rows(b_dir))
    wa, wb = rundir.read_tensors(a_dir / rundir.ADAPTER), rundir.read_tensors(b_dir / rundir.ADAPTER)
    assert set(wa) == set(wb) and all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)


def train(task, out, notes=None, on_step=None, resume=False, method=METHOD, **cfg):
    """``method`` for 2 epochs at batch size 32 unless ``cfg`` says otherwise."""
    return train_run(str(task), method, "tiny-general", "tiny-medical", out,
                     TrainConfig(**{"epochs": 2, "batch_size": 32, "seed": 0, **cfg}), on_step=on_step,
                     on_note=notes.append if notes is not None else lambda message: None, resume=resume)


@pytest.fixture(scope="module")
def batch8(small_task, tmp_path_factory):
    """The reference: batch size 8 from the start, no memory limit."""
    out = tmp_path_factory.mktemp("oom") / "batch8"
    return out, train_run(str(small_task), METHOD, "tiny-general", "tiny-medical", out,
                          TrainConfig(epochs=2, batch_size=8, seed=0), on_note=lambda message: None)


# --- without --auto-batch: stop, name the size to try, keep the checkpoint ------------------------------------

DEVICE_SCRIPT = r"""
import sys, torch
from medvtab.engine import run as run_module
fits, after = int(sys.argv[1]), int(sys.argv[2])  # training batches above FITS images fail after AFTER batches
built, calls = run_module.build_model, [0]
def build(*args, **kwargs):
    model = built(*args, **kwargs)
    def check(module, args):
        if not torch.is_inference_mode_enabled():
            calls[0] += 1
            if calls[0] > after and args[0].shape[0] > fits:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    model.backbone.model.patch_embed.register_forward_pre_hook(check)
    return model
run_module.build_model = build
from medvtab.cli import main
sys.argv = ["medvtab", *sys.argv[3:]]
main()
"""


def test_cli_oom_in_a_later_epoch_stops_with_one_line_and_keeps_the_checkpoint(small_task, tmp_path, monkeypatch):
    """The real CLI (``medvtab.cli.main``) on a device whose memory shrinks after epoch 1's two batches; then
    the resume the message suggests finishes the run at the halved batch size."""
    run = tmp_path / "run"
    got = subprocess.run([sys.executable, "-c", DEVICE_SCRIPT, "16", "2", "train", "--task", str(small_task),
                          "--method", METHOD, "--epochs", "2", "--batch-size", "32", "--out", str(run)],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "80"})
    assert got.returncode == 2, got.stderr[-2000:]
    assert "Traceback" not in got.stderr
    assert got.stderr.strip().splitlines()[-1] == (
        f"error: out of GPU memory at batch size 32 in epoch 2 (training); try --batch-size 16, or --auto-batch to "
        f"halve it automatically; the last finished epoch (1) is kept in {run}/checkpoint.pt (resume with "
        f"--resume {run} --auto-batch)")
    state = load_checkpoint(run / rundir.CHECKPOINT)
    assert state["epoch"] == 1 and state["batch_size"] == 32 and state["batch_size_reductions"] == []
    assert not (run / rundir.METRICS).exists()

    device = SmallDevice(monkeypatch, train=16)
    notes = []
    metrics = train(small_task, run, notes, auto_batch=True, resume=True)
    assert metrics["batch_size_reductions"] == [{"epoch": 2, "phase": "train", "from": 32, "to": 16}]
    assert metrics["batch_size"] == 16 and metrics["epochs_run"] == 2
    assert max(n for phase, n in device.seen if phase == "train") == 32  # tried once, then halved
    assert ("note: out of GPU memory at batch size 32 in epoch 2 (training); --auto-batch: --batch-size 16 from "
            "here on (epoch 2 starts again)") in notes


def test_evaluation_oom_names_the_eval_batch_size(small_task, tmp_path, monkeypatch):
    """The 16 validation images run out of memory: the batch that failed held 16 (not --eval-batch-size 256)."""
    SmallDevice(monkeypatch, eval=8)
    with pytest.raises(MedvtabError) as err:
        train(small_task, tmp_path / "run", epochs=1)
    assert str(err.value) == ("out of GPU memory at batch size 16 in epoch 1 (evaluation); try --eval-batch-size "
                              "8, or --auto-batch to halve it automatically; no epoch had finished")


def test_auto_batch_stops_when_not_even_one_image_fits(small_task, tmp_path, monkeypatch):
    SmallDevice(monkeypatch, train=0)
    with pytest.raises(MedvtabError, match=r"out of GPU memory at batch size 1 in epoch 1 \(training\): the model "
                                           r"does not fit on this device even one image at a time"):
        train(small_task, tmp_path / "run", auto_batch=True)


# --- with --auto-batch: halve, record, and end as a run at the smaller size would -------------------------------

def test_auto_batch_in_epoch_1_equals_a_run_started_at_the_smaller_batch(small_task, tmp_path, monkeypatch, batch8):
    device = SmallDevice(monkeypatch, train=8)
    notes = []
    metrics = train(small_task, tmp_path / "auto", notes, auto_batch=True)
    assert metrics["batch_size_reductions"] == TRAIN_REDUCTIONS
    assert metrics["batch_size"] == 8 and metrics["eval_batch_size"] == 256
    assert [n for phase, n in device.seen if phase == "train"][:3] == [32, 16, 8]
    assert sum(n.startswith("note: out of GPU memory") for n in notes) == 2
    same_run(tmp_path / "auto", metrics, *batch8)
    recorded = json.loads((tmp_path / "auto" / rundir.METRICS).read_text())
    assert recorded["batch_size_reductions"] == TRAIN_REDUCTIONS and recorded["batch_size"] == 8


def test_evaluation_oom_halves_the_eval_batch_with_identical_results(small_task, tmp_path, monkeypatch, batch8):
    SmallDevice(monkeypatch, eval=4)
    metrics = train(small_task, tmp_path / "auto", batch_size=8, auto_batch=True)
    assert metrics["batch_size_reductions"] == [{"epoch": 1, "phase": "eval", "from": 16, "to": 8},
                                                {"epoch": 1, "phase": "eval", "from": 8, "to": 4}]
    assert metrics["eval_batch_size"] == 4 and metrics["batch_size"] == 8
    same_run(tmp_path / "auto", metrics, *batch8)

    # the retried pass gives the same probabilities as one pass over everything (to TOL: batch sizes differ)
    from medvtab.engine.run import load_run
    monkeypatch.undo()  # the model loaded back fits any batch until told otherwise
    model, _, _ = load_run(tmp_path / "auto")
    with np.load(small_task) as data:
        images, labels = data["test_images"][..., None], data["test_labels"].reshape(-1)
    whole = evaluate(model, images, labels, 256, torch.device("cpu"))

    def fits_3(module, args):
        if args[0].shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
    model.backbone.model.patch_embed.register_forward_pre_hook(fits_3)
    batches = BatchSizes(8, 256, auto=True, on_note=lambda message: None)
    halved = batches.evaluate(lambda b: evaluate(model, images, labels, b, torch.device("cpu")), len(labels),
                              "test", None, 2)
    assert batches.eval == 2 and np.allclose(whole.probs, halved.probs, rtol=TOL["rel"], atol=TOL["abs"])
    assert whole.loss == pytest.approx(halved.loss, **TOL)


def test_feature_caching_method_retries_its_feature_pass(small_task, tmp_path, monkeypatch):
    """linear computes the backbone features of the 64 train images once, in evaluation batches."""
    reference = train(small_task, tmp_path / "reference", method="linear")
    SmallDevice(monkeypatch, eval=4)
    metrics = train(small_task, tmp_path / "auto", method="linear", auto_batch=True)
    assert metrics["batch_size_reductions"] == [{"epoch": 1, "phase": "eval", "from": s, "to": s // 2}
                                                for s in (64, 32, 16, 8)]
    same_run(tmp_path / "auto", metrics, tmp_path / "reference", reference)


def test_resume_after_a_reduction_continues_at_the_reduced_batch(small_task, tmp_path, monkeypatch, batch8):
    """Killed at the first step of epoch 2 (batch 8: 8 steps an epoch), resumed on a device without a limit and
    without --auto-batch: it goes on at batch size 8 from the checkpoint, to the reference run's results."""
    run = tmp_path / "run"
    SmallDevice(monkeypatch, train=8)

    def kill_in_epoch_2(step, total, loss):
        if step == 9:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(small_task, run, auto_batch=True, on_step=kill_in_epoch_2)
    state = load_checkpoint(run / rundir.CHECKPOINT)
    assert state["epoch"] == 1 and state["batch_size"] == 8 and state["batch_size_reductions"] == TRAIN_REDUCTIONS

    device = SmallDevice(monkeypatch)
    metrics = train(small_task, run, resume=True)
    assert {n for phase, n in device.seen if phase == "train"} == {8}
    assert metrics["batch_size"] == 8 and metrics["batch_size_reductions"] == TRAIN_REDUCTIONS
    same_run(run, metrics, *batch8)
