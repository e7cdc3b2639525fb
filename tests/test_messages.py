"""Messages that used to mislead (issue 20, item 8): each now says what is wrong, in one line, without suggesting
an unsafe action, never cut mid-word, and with a command-line hint rather than a Python one."""
from __future__ import annotations

import pytest

from medvtab.atomic import check_new_dir
from medvtab.data.catalogue import get_task
from medvtab.data.loading import read_npz
from medvtab.engine.state import differing_fields
from medvtab.errors import MedvtabError, first_line


def test_a_text_file_named_npz_is_not_called_pickled(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("not numbers\n")
    with pytest.raises(MedvtabError) as err:
        read_npz(path)
    assert "not an .npz file" in str(err.value) and "pickle" not in str(err.value)


def test_third_party_messages_are_cut_at_a_word():
    text = first_line(RuntimeError("Re-running `torch.compile` " + "with force=True to force a recompile " * 10))
    assert text.endswith(" ...") and text[:-4].split()[-1] in "Re-running `torch.compile` with force=True to force a recompile"
    assert first_line(ValueError("")) == "ValueError" and first_line(OSError("\n  real line\nmore")) == "real line"


def test_a_file_as_output_directory_is_called_a_file(tmp_path):
    path = tmp_path / "out"
    path.write_text("x")
    with pytest.raises(MedvtabError, match="is a file, not a directory"):
        check_new_dir(path)


def test_resume_names_the_fields_that_differ():
    ours = {"task": "a", "train": {"lr": 1e-3, "epochs": 3}, "method_config": {"keep_ratio": 0.5}}
    theirs = {"task": "a", "train": {"lr": 1e-4, "epochs": 3}, "method_config": {"keep_ratio": 0.5}}
    assert differing_fields(theirs, ours) == ["train.lr"]


def test_unknown_task_hint_is_a_command():
    with pytest.raises(MedvtabError) as err:
        get_task("zzzzzzzz")
    assert "medvtab data list" in str(err.value) and "list_tasks()" not in str(err.value)


def test_bundled_tasks_carry_the_registrys_class_names():
    from medvtab.data.loading import load_task

    assert load_task("pneumoniamnist", image_size=28).class_names == ["normal", "pneumonia"]
    assert load_task("breastmnist", image_size=28).class_names == ["malignant", "normal, benign"]
