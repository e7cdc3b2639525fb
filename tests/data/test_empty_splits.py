"""An empty validation or test split (a real npz with zero test images) fails `data check` and stops `train`
before anything is written, with --no-check too (it used to crash after the first epoch, leaving a run directory
that neither --resume nor a rerun accepted)."""
from __future__ import annotations

import sys
from unittest import mock

import numpy as np
import pytest

from medvtab.data.loading import bundled_path


def with_empty(tmp_path, split: str):
    with np.load(bundled_path("breastmnist"), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays[f"{split}_images"], arrays[f"{split}_labels"] = arrays[f"{split}_images"][:0], arrays[f"{split}_labels"][:0]
    path = tmp_path / f"empty-{split}.npz"
    np.savez(path, **arrays)
    return path


def run_cli(capsys, *args):
    from medvtab import cli

    with mock.patch.object(sys, "argv", ["medvtab", *map(str, args)]), pytest.raises(SystemExit) as exit_:
        cli.main()
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


@pytest.mark.parametrize("split, name", [("val", "val"), ("test", "test")])
def test_data_check_fails(tmp_path, capsys, split, name):
    code, out, _ = run_cli(capsys, "data", "check", with_empty(tmp_path, split))
    assert code == 1 and "FAIL  tiny splits" in out and f"{name}: no images" in out, out


@pytest.mark.parametrize("split, name", [("val", "validation"), ("test", "test")])
@pytest.mark.parametrize("no_check", [False, True])
def test_train_stops_before_writing(tmp_path, capsys, split, name, no_check):
    args = ["train", "--task", with_empty(tmp_path, split), "--method", "linear", "--train-size", "32",
            "--epochs", "1", "--out", tmp_path / "run"] + (["--no-check"] if no_check else [])
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and err.count("\n") == 1, err
    assert f"the {name} split has no images" in err, err
    assert not (tmp_path / "run").exists()
