"""One run on two CPU processes (gloo) through Lightning Fabric's DDP, started by `--devices 2` and by torchrun,
against the same run on one process. Tolerance: the two-process run splits each global batch in two and
averages the gradients, which is the one-process optimisation up to floating-point summation order; test
AUROC may differ by at most 1e-3 and accuracy by at most one test image."""
from __future__ import annotations

import json
import os
import subprocess
import sys


RUN = [sys.executable, "-m", "medvtab.cli", "train", "--epochs", "2", "--batch-size", "16", "--seed", "3"]


def train(args: list[str], out, launcher: list[str] | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = (launcher + RUN[2:] if launcher else RUN) + args + ["--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def close(a: dict, b: dict, test_images: int) -> None:
    assert abs(a["auroc"] - b["auroc"]) <= 1e-3, (a["auroc"], b["auroc"])
    assert abs(a["accuracy"] - b["accuracy"]) <= 1 / test_images + 1e-9, (a["accuracy"], b["accuracy"])


def test_two_processes_match_one(small_task, tmp_path):
    """DynaMer (routed experts: some get no gradient in a step) via Fabric's own launcher."""
    args = ["--task", str(small_task), "--method", "dynamer"]
    one = train(args, tmp_path / "one")
    two = train(args + ["--devices", "2"], tmp_path / "two")
    assert one["processes"] == 1 and two["processes"] == 2
    close(one, two, one["split_sizes"]["test"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # rank 1 wrote nothing


def test_torchrun_launch_matches_one_process(small_task, tmp_path):
    """The linear probe's cached-feature path (a forward method other than forward) under torchrun."""
    args = ["--task", str(small_task), "--method", "linear"]
    one = train(args, tmp_path / "one")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    two = train(args, tmp_path / "two", launcher=launcher)
    assert two["processes"] == 2
    close(one, two, one["split_sizes"]["test"])


def test_options_are_checked(small_task, tmp_path):
    done = subprocess.run(RUN + ["--task", str(small_task), "--devices", "0", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--devices" in done.stderr
