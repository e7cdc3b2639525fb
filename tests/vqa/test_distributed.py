"""``medvtab vqa train --devices 2`` (two CPU processes, gloo, through Lightning Fabric's DDP) against the same
command on one process: each global batch is split in two, each process's loss is its summed answer-token loss
over the global token count, so losses and weights agree up to floating-point order.

The Q-Former's dropout draws its masks per process, so the comparison turns it off (``--qformer-dropout 0``;
measured with the default 0.1: final loss 11.9436 vs 11.9496 on this command)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from medvtab.cli import main

ARGS = ["vqa", "train", "--stage", "finetune", "--data", "vqa-rad", "--limit", "16", "--epochs", "2",
        "--num-queries", "2", "--batch-size", "8", "--qformer-dropout", "0"]


pytestmark = pytest.mark.usefixtures("shared_vqa_data")


def train(out, devices: int) -> dict:
    # Fabric starts the second process by re-running this same command line
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "medvtab.cli", *ARGS, "--devices", str(devices), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_two_processes_match_one(tmp_path):
    one = train(tmp_path / "one", 1)
    two = train(tmp_path / "two", 2)
    assert one["processes"] == 1 and two["processes"] == 2
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-4)
    logs = [(tmp_path / run / "log.csv").read_text().splitlines()[1:] for run in ("one", "two")]
    losses = [[float(row.split(",")[1]) for row in log] for log in logs]
    assert len(losses[0]) == 2 and losses[1] == pytest.approx(losses[0], rel=1e-4)
    w1, w2 = (load_file(tmp_path / run / "trainable.safetensors") for run in ("one", "two"))
    assert w1.keys() == w2.keys()
    for key in w1:
        assert (w1[key] - w2[key]).abs().max().item() <= 1e-5, key
    # rank 1 wrote nothing: no third directory, no leftover staging folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert json.loads((tmp_path / "two" / "config.json").read_text())["options"]["devices"] == 2


def test_fsdp_on_cpu_is_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", ["medvtab", *ARGS, "--strategy", "fsdp", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--strategy" in err and "fsdp" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
