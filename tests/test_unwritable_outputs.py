"""Unwritable or invalid outputs end in one line naming the path and the cause, exit 2, nothing torn (issue 20,
item 3). The file system's refusals are injected at the boundary (os.replace, mkdir, torch.save's writer): this
machine's tests run as root, for whom permissions do not bite, and cannot mount a read-only or tiny file system."""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from unittest import mock

import pytest

from medvtab.atomic import atomic_write, write_json
from medvtab.errors import MedvtabError

TRAIN = ["train", "--task", "breastmnist", "--method", "linear", "--train-size", "32", "--epochs", "1"]


def run_cli(capsys, *args):
    from medvtab import cli

    with mock.patch.object(sys, "argv", ["medvtab", *map(str, args)]), pytest.raises(SystemExit) as done:
        cli.main()
    out, err = capsys.readouterr()
    return done.value.code, out, err


def refuse(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "no space left on device"),
                                         (errno.EROFS, "read-only file system")])
def test_atomic_write_names_the_path_and_the_cause_and_leaves_nothing(tmp_path, monkeypatch, code, cause):
    monkeypatch.setattr(os, "replace", refuse(code))
    with pytest.raises(MedvtabError, match=f"^{tmp_path / 'x.json'}: cannot write: {cause}$"):
        write_json(tmp_path / "x.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_under_torch_save_is_named(tmp_path, monkeypatch):
    """torch.save reports a full disk as a RuntimeError ("unexpected pos"); the free space tells."""
    import shutil

    def torch_full(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(MedvtabError, match="checkpoint.pt: cannot write: no space left on device$"):
        atomic_write(tmp_path / "checkpoint.pt", torch_full)
    assert list(tmp_path.iterdir()) == []


def test_a_runtime_error_with_space_left_is_not_called_a_full_disk(tmp_path):
    def broken(tmp):
        raise RuntimeError("something else")
    with pytest.raises(RuntimeError, match="something else"):
        atomic_write(tmp_path / "f.pt", broken)


def test_train_on_a_read_only_file_system(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Path, "mkdir", refuse(errno.EROFS))
    code, _, err = run_cli(capsys, *TRAIN, "--out", tmp_path / "run")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and errors == [f"error: {tmp_path / 'run'}: cannot write: read-only file system"], err


@pytest.mark.parametrize("command", ["bench", "report", "train"])
def test_a_file_where_an_output_directory_goes(tmp_path, capsys, command):
    target = tmp_path / "taken"
    target.write_text("precious\n")
    if command == "report":
        from medvtab.bench.grid import expand_grid, parse_grid
        from medvtab.bench.runner import run_grid

        from .bench.test_runner import Quiet
        store = tmp_path / "store"
        run_grid(store, expand_grid(parse_grid({"tasks": ["breastmnist"], "methods": ["linear"], "train_size": 32,
                                                "train": {"epochs": 1}})), suite="t", console=Quiet())
        args = ["report", store, "--no-attention", "--out", target / "report.html"]
    elif command == "bench":
        args = ["bench", "--suite", "mini", "--quick", "--methods", "linear", "--out", target]
    else:
        args = [*TRAIN, "--out", target]
    code, _, err = run_cli(capsys, *args)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and str(target) in errors[0], err
    assert "is a file" in errors[0] or "not a directory" in errors[0], err
    assert target.read_text() == "precious\n"
