"""`medvtab train` stopped by SIGTERM (a scheduler) or Ctrl-C prints one line on what it kept and the exact command
that goes on: before the first epoch ended, nothing is kept and the same command starts again in the same
directory (it used to be refused both as "not empty" and by --resume); after an epoch, the printed --resume
command continues the run to the end."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def train_args(out: Path, epochs: int) -> list[str]:
    return ["train", "--task", "pneumoniamnist", "--method", "vpt-shallow", "--train-size", "1024", "--batch-size",
            "32", "--epochs", str(epochs), "--out", str(out)]


def stop_when(args: list[str], ready, out: Path) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "medvtab.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while not ready(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_stopped_before_the_first_epoch_starts_again_in_place(tmp_path):
    out = tmp_path / "run"
    stopped = stop_when(train_args(out, 2), lambda d: (d / "splits.json").is_file(), out)
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stderr.splitlines()[-1] == (f"interrupted before the first epoch ended: nothing to resume; the "
                                               f"same command starts again in {out}"), stopped.stderr
    again = subprocess.run([sys.executable, "-m", "medvtab.cli", *train_args(out, 1)], capture_output=True, text=True,
                           env=ENV, timeout=300)
    assert again.returncode == 0, again.stderr
    assert (out / "metrics.json").is_file()


def test_stopped_after_an_epoch_prints_the_resume_command_that_finishes_it(tmp_path):
    out = tmp_path / "run"
    stopped = stop_when(train_args(out, 3), lambda d: (d / "checkpoint.pt").is_file(), out)
    assert stopped.returncode == 130, stopped.stderr
    last = stopped.stderr.splitlines()[-1]
    prefix = f"interrupted: the last finished epoch is kept in {out / 'checkpoint.pt'}; continue with: medvtab "
    assert last.startswith(prefix), stopped.stderr
    command = shlex.split(last[len(prefix):])
    assert "--resume" in command and "--out" not in command
    resumed = subprocess.run([sys.executable, "-m", "medvtab.cli", *command], capture_output=True, text=True,
                             env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "metrics.json").is_file() and not (out / "checkpoint.pt").exists()
