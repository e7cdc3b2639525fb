"""The speed options of `medvtab train`, on the real train entry point (train_run, and the CLI in process) with
the bundled tiny backbone pair and 48 PneumoniaMNIST train images, 1 epoch.

- ``grad_checkpointing``: the run is bitwise identical to the run without it on CPU (same per-epoch losses and
  validation scores, same test metrics and routing statistics, same adapter weights: the recomputation runs the
  same operations on the same inputs), and every backbone block really runs a second time in each backward.
- ``compile``: where torch.compile raises (at compiling, at the first compiled call, in the first compiled
  backward, or at a later recompilation) the run finishes eagerly, bitwise equal to an eager run, with the
  reason in metrics.json and config.json. A real compiled run (about 3 minutes on 2 CPU cores against half a
  second eager, nearly all of it compiling: marked slow) matches the eager one to float tolerance: losses within
  1e-4, test AUROC within 1e-3, accuracy within one test image; so does a compiled and checkpointed run on two
  DDP processes (slow too).
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

from medvtab.engine import rundir
from medvtab.engine import run as run_module
from medvtab.engine.loop import TrainConfig
from medvtab.engine.run import run_fingerprint, train_run
from medvtab.engine.acceleration import CompiledForward, compile_with_fallback, set_grad_checkpointing
from medvtab.errors import MedvtabError

TRAIN_SIZE, BATCH = 48, 16
STEPS = TRAIN_SIZE // BATCH  # training steps in the one epoch
RESULT_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "per_class_recall", "routing", "best_epoch",
               "epochs_run")


def train(small_task, out: Path, method: str = "dynamer", notes: list | None = None, **options) -> dict:
    cfg = TrainConfig(epochs=1, batch_size=BATCH, seed=0, **options)
    return train_run(str(small_task), method, "tiny-general", "tiny-medical", out, cfg, train_size=TRAIN_SIZE,
                     on_note=(notes if notes is not None else []).append)


def log_rows(run: Path) -> list[dict]:
    with open(run / rundir.LOG, newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def assert_same_run(a: Path, b: Path) -> None:
    """Bitwise the same run: log (but for timings), test metrics, adapter weights."""
    assert log_rows(a) == log_rows(b)
    ma, mb = (rundir.read_json(run / rundir.METRICS) for run in (a, b))
    assert {k: ma[k] for k in RESULT_KEYS} == {k: mb[k] for k in RESULT_KEYS}
    wa, wb = (rundir.read_tensors(run / rundir.ADAPTER) for run in (a, b))
    assert set(wa) == set(wb) and wa
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.fixture(scope="module")
def eager(small_task, tmp_path_factory, one_thread):
    """The plain DynaMer run every other DynaMer run here is compared with."""
    out = tmp_path_factory.mktemp("eager") / "run"
    train(small_task, out)
    return out


# --- gradient checkpointing ---------------------------------------------------------------------------------

@pytest.fixture
def block_calls(monkeypatch):
    """Counts the calls of every backbone block of the models train_run builds (hooks on the timm blocks: a
    checkpointed block runs once in the forward and starts once more in the backward)."""
    built, calls = run_module.build_model, {"n": 0, "blocks": 0}

    def build_counting(*args, **kwargs):
        model = built(*args, **kwargs)
        from medvtab.backbones import Backbone

        backbones = [m for m in model.modules() if isinstance(m, Backbone)]
        for backbone in backbones:
            for blk in backbone.model.blocks:
                # a pre-hook: a recomputation stops as soon as it has what the backward needs (before the
                # block's end, where a forward hook would run)
                blk.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
        calls["blocks"] = sum(b.depth for b in backbones)
        return model

    monkeypatch.setattr(run_module, "build_model", build_counting)
    return calls


@pytest.mark.parametrize("method, recomputed", [
    ("dynamer", 6),  # blocks 1-3 of each backbone: block 0 comes before the first adapter (after block 0) and
                     # has no trainable input, so autograd records nothing there to recompute
    ("full", 4),     # every block trains
])
def test_grad_checkpointing_gives_the_same_run_and_recomputes_the_blocks(small_task, tmp_path, block_calls, method,
                                                                         recomputed):
    plain = tmp_path / "plain"
    train(small_task, plain, method)
    plain_calls = block_calls["n"]
    block_calls["n"] = 0
    checkpointed = tmp_path / "checkpointed"
    metrics = train(small_task, checkpointed, method, grad_checkpointing=True)
    # the recomputation: those blocks once more per training step (evaluation records no graph: none there)
    assert block_calls["blocks"] == (8 if method == "dynamer" else 4)
    assert block_calls["n"] - plain_calls == STEPS * recomputed
    assert_same_run(plain, checkpointed)
    assert metrics["grad_checkpointing"] is True
    assert rundir.read_json(checkpointed / rundir.CONFIG)["train"]["grad_checkpointing"] is True
    assert rundir.read_json(plain / rundir.METRICS)["grad_checkpointing"] is False


def test_set_grad_checkpointing_reaches_every_backbone(pair):
    from medvtab.methods import build_model, make_config

    model = build_model("dynamer", make_config("dynamer", {}), *pair, 2)
    try:
        assert set_grad_checkpointing(model, True) == 2
        assert all(b.grad_checkpointing for b in pair)
    finally:
        assert set_grad_checkpointing(model, False) == 2
    assert not any(b.grad_checkpointing for b in pair)


# --- compile: the fallback ----------------------------------------------------------------------------------

def fallback_of(run: Path) -> str:
    record = rundir.read_json(run / rundir.METRICS)["compile"]
    assert record["requested"] is True and record["in_effect"] is False, record
    assert rundir.read_json(run / rundir.CONFIG)["compile"] == record
    return record["fallback"]


def test_compile_failing_at_torch_compile_runs_eagerly_via_the_cli(small_task, tmp_path, eager, monkeypatch, capsys):
    """``medvtab train --compile --grad-checkpointing`` where torch.compile itself raises (as it does on a Python
    dynamo does not support): the run finishes eagerly, the same run as without the options."""
    from medvtab import cli

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no compiler on this machine")

    monkeypatch.setattr(torch, "compile", no_compiler)
    out = tmp_path / "run"
    argv = ["medvtab", "train", "--task", str(small_task), "--method", "dynamer", "--epochs", "1", "--batch-size",
            str(BATCH), "--train-size", str(TRAIN_SIZE), "--seed", "0", "--compile", "--grad-checkpointing",
            "--out", str(out)]
    with mock.patch.object(sys, "argv", argv), pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code in (0, None), capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["accuracy"] is not None
    assert fallback_of(out) == "torch.compile: RuntimeError: no compiler on this machine"
    config = rundir.read_json(out / rundir.CONFIG)
    assert config["train"]["compile"] is True and config["train"]["grad_checkpointing"] is True
    assert_same_run(eager, out)


def test_compile_failing_at_the_first_call_runs_eagerly(small_task, tmp_path, eager, monkeypatch):
    def failing_compile(fn, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("inductor: C++ compile error")
        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    out, notes = tmp_path / "run", []
    train(small_task, out, notes=notes, compile=True)
    assert fallback_of(out) == "first compiled training call: RuntimeError: inductor: C++ compile error"
    assert [n for n in notes if "--compile" in n] == ["note: --compile: running eagerly from here on (first compiled training call: RuntimeError: "
                     "inductor: C++ compile error)"]
    assert_same_run(eager, out)


class FailingBackward(torch.autograd.Function):
    """Identity forward; a backward that fails like a lazily compiled backward graph that cannot be built."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward graph lowering failed")


def test_compile_failing_in_the_first_backward_runs_eagerly_from_the_same_state(small_task, tmp_path, eager,
                                                                               monkeypatch):
    """The probe step (forward and backward on 2 and 3 images) fails in its backward: no trace of it is left
    (random state, gradients, the DynaMer layers' balance losses), so the run is the eager one exactly."""
    def compile_with_failing_backward(fn, **kwargs):
        return lambda *args, **kw: FailingBackward.apply(fn(*args, **kw))

    monkeypatch.setattr(torch, "compile", compile_with_failing_backward)
    out = tmp_path / "run"
    train(small_task, out, compile=True)
    assert fallback_of(out) == "first compiled training step: RuntimeError: backward graph lowering failed"
    assert_same_run(eager, out)


def test_compile_failing_at_a_later_recompilation_falls_back_there(small_task, tmp_path, eager, monkeypatch):
    """The compiled forward works (here: it is the eager one) until a recompilation for the test pass (the
    second evaluation call, after the validation pass) fails with a compiler error: the rest of the run is
    eager, the result the same."""
    from torch._dynamo.exc import RecompileError

    calls = {"eval": 0}

    def compile_failing_later(fn, **kwargs):
        def compiled(*args, **kw):
            if not fn.__self__.training:
                calls["eval"] += 1
                if calls["eval"] == 2:
                    raise RecompileError("recompilation failed")
            return fn(*args, **kw)
        return compiled

    monkeypatch.setattr(torch, "compile", compile_failing_later)
    out = tmp_path / "run"
    train(small_task, out, compile=True)
    assert fallback_of(out) == "a later compiled evaluation call: RecompileError: recompilation failed"
    assert_same_run(eager, out)


def test_compiled_forward_lets_other_errors_of_a_later_call_through():
    model = torch.nn.Linear(3, 2)
    compiled = CompiledForward(model)
    compiled.compiled = lambda x: model.__class__.forward(model, x) if x.shape[0] == 1 else x.missing
    assert model(torch.ones(1, 3)).shape == (1, 2)  # the first call in this mode: proven
    with pytest.raises(AttributeError):  # a bug, not a compiler failure: raised, not hidden by a fallback
        model(torch.ones(2, 3))
    assert compiled.in_effect
    compiled.remove()
    assert "forward" not in model.__dict__ and model(torch.ones(2, 3)).shape == (2, 2)


def test_compile_with_fallback(monkeypatch):
    fn = torch.nn.Linear(2, 2)
    monkeypatch.setattr(torch, "compile", lambda f, **kwargs: f)
    assert compile_with_fallback(fn, probe=lambda f: f(torch.ones(1, 2))) == (fn, None)
    used, reason = compile_with_fallback(fn, probe=lambda f: f(torch.ones(1, 3)))  # a probe that fails
    assert used is fn and reason.startswith("RuntimeError: mat1 and mat2 shapes cannot be multiplied")


def test_compile_is_not_applied_to_feature_caching_methods(small_task, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", mock.Mock(side_effect=AssertionError("not to be called")))
    out = tmp_path / "run"
    metrics = train(small_task, out, "linear", compile=True)
    assert metrics["compile"] == {"requested": True, "in_effect": False,
                                  "fallback": "not applied: a feature-caching method (its backbone features are "
                                              "computed once and its head trains on them)"}


def test_compile_not_requested_is_recorded(eager):
    assert rundir.read_json(eager / rundir.METRICS)["compile"] == {"requested": False, "in_effect": False,
                                                                  "fallback": None}
    assert "compile" not in rundir.read_json(eager / rundir.CONFIG)  # the train config says it was not asked for


# --- where a TrainConfig goes: resume, grids -----------------------------------------------------------------

def test_speed_options_do_not_stop_a_resume():
    """A run may be resumed with or without them (they do not decide the result), as with --device."""
    config = {"task": "t", "task_source": "s", "method": "dynamer", "method_config": {}, "general": "g",
              "medical": "m", "train_size": None, "protocol": {}, "num_classes": 2}
    fingerprints = [run_fingerprint({**config, "train": TrainConfig(**options).model_dump()}, 48)
                    for options in ({}, {"compile": True}, {"grad_checkpointing": True})]
    assert fingerprints[0] == fingerprints[1] == fingerprints[2]


def test_grids_take_the_speed_options_as_training_overrides():
    from medvtab.bench.grid import expand_grid, parse_grid

    def train_of(train: dict) -> dict:
        specs = expand_grid(parse_grid({"tasks": ["breastmnist"], "methods": ["dynamer"], "train": train}))
        return specs[0].train

    assert train_of({"compile": True, "grad_checkpointing": True}) == {"compile": True, "grad_checkpointing": True}
    assert train_of({"compile": False, "grad_checkpointing": False}) == {}  # defaults: the run ids stay as they were
    TrainConfig(**train_of({"compile": True}), seed=0, device="cpu")  # as the grid runner builds it
    with pytest.raises(MedvtabError, match="field 'train.compile'"):
        train_of({"compile": "sometimes"})


# --- compile: a real compiled run ----------------------------------------------------------------------------

@pytest.mark.slow
def test_real_compiled_run_matches_eager(small_task, tmp_path, eager, monkeypatch):
    from torch._dynamo.utils import counters

    real_compile, calls = torch.compile, {"compiled": 0}

    def counting_compile(fn, **kwargs):
        compiled = real_compile(fn, **kwargs)

        def run(*args, **kw):
            calls["compiled"] += 1
            return compiled(*args, **kw)
        return run

    monkeypatch.setattr(torch, "compile", counting_compile)
    graphs = counters["stats"]["unique_graphs"]
    out = tmp_path / "run"
    metrics = train(small_task, out, compile=True)
    assert metrics["compile"] == {"requested": True, "in_effect": True, "fallback": None}
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo built graphs
    # probe (2) + training steps + validation (1) + test (1): every forward went through the compiled one
    assert calls["compiled"] == 2 + STEPS + 2
    base = rundir.read_json(eager / rundir.METRICS)
    for row, ref in zip(log_rows(out), log_rows(eager), strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert abs(float(row[key]) - float(ref[key])) <= 1e-4, (key, row, ref)
    assert abs(metrics["auroc"] - base["auroc"]) <= 1e-3
    assert abs(metrics["accuracy"] - base["accuracy"]) <= 1 / base["split_sizes"]["test"] + 1e-9


@pytest.mark.slow
def test_two_processes_compiled_and_checkpointed_match_one_eager(small_task, tmp_path, eager):
    """DDP through Fabric (`--devices 2`, gloo) with both options: each process compiles the module Fabric wraps
    (about 3.5 minutes on 2 CPU cores). Tolerance as in test_distributed: the split batches and the compiled
    kernels change the summation order only."""
    import os
    import subprocess

    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "medvtab.cli", "train", "--task", str(small_task), "--method", "dynamer", "--epochs",
           "1", "--batch-size", str(BATCH), "--train-size", str(TRAIN_SIZE), "--seed", "0", "--devices", "2",
           "--compile", "--grad-checkpointing", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics, base = (rundir.read_json(run / rundir.METRICS) for run in (out, eager))
    assert metrics["processes"] == 2 and metrics["grad_checkpointing"] is True
    assert metrics["compile"] == {"requested": True, "in_effect": True, "fallback": None}
    for row, ref in zip(log_rows(out), log_rows(eager), strict=True):
        assert abs(float(row["val_loss"]) - float(ref["val_loss"])) <= 1e-4, (row, ref)
    assert abs(metrics["auroc"] - base["auroc"]) <= 1e-3
    assert abs(metrics["accuracy"] - base["accuracy"]) <= 1 / base["split_sizes"]["test"] + 1e-9


# --- the allocator setting of every command --------------------------------------------------------------------

FAULTS = """
import resource, sys, torch
from medvtab.backbones import load_backbone
from medvtab.engine.allocator import keep_freed_memory
torch.set_num_threads(1)
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
backbone = load_backbone("tiny-general").eval()
images = torch.zeros(256, 3, 28, 28, dtype=torch.uint8)  # batch 256: activation buffers of 5-20 MB
with torch.inference_mode():
    for _ in range(2):
        backbone(images)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        backbone(images)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_activation_memory_stays_in_the_process():
    """Without the setting glibc returns each large buffer to the OS and faults it back in at the next call."""
    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
        applied, count = out.stdout.split()
        return applied, int(count)

    default, kept = faults("default"), faults("keep")
    assert kept[0] == "True"
    assert default[1] > 20_000  # measured: 70,000-90,000 page faults in three forwards
    assert kept[1] < default[1] / 5  # measured: 0-4,800
