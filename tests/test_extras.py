"""A missing optional package stops its part with one line naming the extra that installs it (exit status 2),
and the core never needs one."""
from __future__ import annotations

import sys

import pytest

from medvtab.data.dicom_nifti import read_dicom, read_nifti
from medvtab.errors import MedvtabError
from medvtab.extras import require


def hide(monkeypatch, *modules):
    for name in modules:  # `import name` raises ImportError, even where it was imported before
        monkeypatch.setitem(sys.modules, name, None)


def test_require_returns_the_module_or_names_the_extra():
    assert require("json", extra="x", feature="F").dumps(1) == "1"
    with pytest.raises(MedvtabError, match=r"^F needs no_such_package: install medvtab\[x\]$"):
        require("no_such_package.sub", extra="x", feature="F")
    with pytest.raises(MedvtabError, match=r"^F needs no-such-dist: install medvtab\[x\]$"):
        require("no_such_package", extra="x", feature="F", package="no-such-dist")


@pytest.mark.parametrize("args, hidden, line", [
    (["--tensorboard", "TB"], ["tensorboard", "torch.utils.tensorboard"],
     "option '--tensorboard' needs tensorboard: install medvtab[tracking]"),
    (["--mlflow", "file:///nowhere"], ["mlflow"], "option '--mlflow' needs mlflow-skinny: install medvtab[tracking]"),
    (["--devices", "2"], ["lightning_fabric"],
     "training on several processes needs lightning-fabric: install medvtab[distributed]"),
], ids=["tensorboard", "mlflow", "devices"])
def test_train_without_an_extra(run_medvtab, monkeypatch, small_task, tmp_path, args, hidden, line):
    hide(monkeypatch, *hidden)
    code, _, err = run_medvtab("train", "--task", small_task, "--method", "linear", "--epochs", "1",
                               "--out", tmp_path / "run", *args)
    assert (code, err.strip()) == (2, f"error: {line}")


def test_vqa_without_its_extra(run_medvtab, monkeypatch, tmp_path):
    hide(monkeypatch, "transformers", "transformers.utils", "transformers.utils.logging")
    code, _, err = run_medvtab("vqa", "eval", "--run", tmp_path, "--data", "vqa-rad")
    assert (code, err.strip()) == (2, "error: medvtab vqa needs transformers: install medvtab[vqa]")


def test_medical_formats_without_their_extra(monkeypatch, tmp_path):
    hide(monkeypatch, "pydicom", "nibabel")
    with pytest.raises(MedvtabError, match=r"^DICOM input needs pydicom: install medvtab\[medical-formats\]$"):
        read_dicom(tmp_path / "a.dcm")
    with pytest.raises(MedvtabError, match=r"^NIfTI input needs nibabel: install medvtab\[medical-formats\]$"):
        read_nifti(tmp_path / "a.nii.gz")
