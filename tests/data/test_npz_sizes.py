"""An .npz whose header declares a huge array (a forged or corrupt file: numpy would allocate what it declares
before reading a byte) is refused in one line naming the file, the array and the size, by every command that
reads it, before anything is allocated."""
from __future__ import annotations

import sys
import zipfile
from unittest import mock

import numpy as np
import pytest

from medvtab.data.loading import read_npz
from medvtab.errors import MedvtabError


def forged(tmp_path, n=10**9):
    """A valid two-image npz whose train_images header then claims ``n`` images (same header length)."""
    path = tmp_path / "bomb.npz"
    np.savez(path, train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.zeros(2, np.int64))
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    old, new = b"(2, 28, 28)", f"({n}, 28, 28)".encode()
    grown = len(new) - len(old)  # taken from the header's space padding, so the data stay where they were
    header = members["train_images.npy"].replace(old, new, 1)
    members["train_images.npy"] = header.replace(b" " * grown + b"\n", b"\n", 1)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_a_forged_header_is_refused_before_allocating(tmp_path):
    with pytest.raises(MedvtabError, match=r"bomb\.npz: array 'train_images' declares shape \(1000000000, 28, 28\) "
                                           r"\(730\.2 GiB\) but its file holds \d+ bytes; the file is corrupt"):
        read_npz(forged(tmp_path))


def run_cli(capsys, *args) -> tuple[int, str, str]:
    from medvtab import cli

    with mock.patch.object(sys, "argv", ["medvtab", *map(str, args)]), pytest.raises(SystemExit) as exit_:
        cli.main()
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_train_stops_in_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--method", "linear", "--out", tmp_path / "run", "--task", forged(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "declares shape (1000000000, 28, 28)" in err, err
    assert not (tmp_path / "run").exists()


def test_data_check_fails_its_load_check(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "data", "check", forged(tmp_path))
    assert code == 1 and "FAIL  load" in out and "declares shape (1000000000, 28, 28)" in out, out
