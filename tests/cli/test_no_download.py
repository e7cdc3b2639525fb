"""Loading a run never reaches the network unless asked (issue 20, item 9): a run directory whose config.json was
edited to name a hub backbone (`timm:NAME`, weights from the Hugging Face hub) makes `predict` and `medvtab.load`
stop at once with one line naming the spec and `--allow-download`, instead of trying a download."""
from __future__ import annotations

import json
import sys
import time
from unittest import mock

import pytest
from PIL import Image

import medvtab
from medvtab.errors import MedvtabError


def run_cli(capsys, *args):
    from medvtab import cli

    with mock.patch.object(sys, "argv", ["medvtab", *map(str, args)]), pytest.raises(SystemExit) as done:
        cli.main()
    out, err = capsys.readouterr()
    return done.value.code, out, err


def test_an_edited_run_does_not_download(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--task", "breastmnist", "--method", "linear", "--train-size", "32",
                           "--epochs", "1", "--out", run)
    assert code in (0, None), err
    config = json.loads((run / "config.json").read_text())
    config["general"] = "timm:vit_tiny_patch16_224"
    (run / "config.json").write_text(json.dumps(config))
    Image.new("L", (28, 28)).save(tmp_path / "scan.png")

    start = time.perf_counter()
    code, _, err = run_cli(capsys, "predict", "--run", run, tmp_path / "scan.png")
    assert code == 2 and err.count("\n") == 1, err
    assert "timm:vit_tiny_patch16_224: its weights would be downloaded" in err and "--allow-download" in err
    assert time.perf_counter() - start < 30  # no DNS timeouts: nothing was tried
    with pytest.raises(MedvtabError, match="would be downloaded"):
        medvtab.load(run)
