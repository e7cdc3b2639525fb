"""Loading (medvtab.data.loading): registered names under a data root, and the ImageFolder reader."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvtab.data import loading
from medvtab.data.loading import bundled_path, class_folder_files, load_task, read_npz
from medvtab.errors import MedvtabError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path.relative_to(SHARED.parent)} absent: ../shared/data absent or incomplete")
    return path


def test_registered_names_resolve_under_the_data_root(tmp_path, monkeypatch):
    """pbc is the one registered real set not bundled: it resolves under --data-root / $MEDVTAB_DATA."""
    source = need(SHARED / "pbc" / "pbc_28.npz")
    with pytest.raises(MedvtabError, match=rf"task 'pbc': not found under data root {tmp_path} "
                                           rf"\(expected {tmp_path / 'pbc' / 'pbc_28.npz'}\)"):
        load_task("pbc", data_root=tmp_path)
    (tmp_path / "pbc").mkdir()
    (tmp_path / "pbc" / "pbc_28.npz").symlink_to(source)
    data = load_task("PBC", data_root=tmp_path)
    assert data.name == "pbc" and data.sizes() == {"train": 11965, "val": 1708, "test": 3419}
    monkeypatch.setenv("MEDVTAB_DATA", str(tmp_path))
    assert load_task("pbc").source == str(tmp_path / "pbc" / "pbc_28.npz")
    # the bundled copies win over the data root
    for name in ("retinamnist", "pneumoniamnist", "breastmnist", "kermany-cxr"):
        assert load_task(name).source == str(bundled_path(name))


def test_no_data_root_is_a_named_error(monkeypatch):
    monkeypatch.delenv("MEDVTAB_DATA", raising=False)
    monkeypatch.setattr(loading, "default_data_root", lambda: None)
    with pytest.raises(MedvtabError, match=r"task 'pbc'.*--data-root.*pbc/pbc_28\.npz"):
        load_task("pbc")


def test_default_data_root_is_shared_data_beside_the_project(monkeypatch):
    monkeypatch.delenv("MEDVTAB_DATA", raising=False)
    if not SHARED.is_dir():
        pytest.skip("../shared/data absent")
    assert loading.default_data_root() == SHARED
    assert load_task("pbc").source == str(SHARED / "pbc" / "pbc_28.npz")


def test_class_folders_are_read_in_split_class_path_order(tmp_path):
    for rel in ("train/b/2.png", "train/b/1.png", "train/a/x/9.png", "test/a/0.png", "train/a/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / rel) if rel.endswith(".png") else \
            (tmp_path / rel).write_text("not an image")
    found = [(f.relative_to(tmp_path).as_posix(), c, s) for f, c, s in class_folder_files(tmp_path)]
    assert found == [("train/a/x/9.png", "a", "train"), ("train/b/1.png", "b", "train"),
                     ("train/b/2.png", "b", "train"), ("test/a/0.png", "a", "test")]


def test_class_folder_walk_keeps_the_order_of_sorted_rglob(tmp_path):
    """The lazy walk orders paths as sorted(rglob) does (part by part, so "a/z" before "a-b/c" before "a.b"),
    takes symlinked files, and does not enter symlinked folders."""
    rels = ("c/a/z.png", "c/a-b/c.png", "c/a.b", "c/a0.png", "c/A.png", "c/_x/.hidden.png", "c/a/b/c/d.png",
            "c/a/b.png", "c/ab.png", "c/a b/1.png", "c/\u00e9.png")
    for rel in rels:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "c" / "link.png").symlink_to(tmp_path / "c" / "a0.png")
    (tmp_path / "c" / "linked-dir").symlink_to(tmp_path / "c" / "a")
    expected = [f for f in sorted((tmp_path / "c").rglob("*")) if f.is_file()]
    assert [f for f, _, _ in class_folder_files(tmp_path, lambda f: True)] == expected
    assert len(expected) == len(rels) + 1


def test_imagefolder_of_mixed_grey_and_colour_loads_as_rgb(tmp_path):
    rng = np.random.default_rng(0)
    for c, shape in (("a", (5, 7)), ("b", (6, 6, 3))):
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    data = load_task(str(tmp_path), image_size=8)
    assert data.class_names == ["a", "b"] and data.train.images.shape[1:] == (8, 8, 3)
    assert sum(data.sizes().values()) == 20


def test_read_npz_gives_the_source_splits_or_a_pool():
    parts = read_npz(bundled_path("breastmnist"))
    assert [k for k in parts] == ["train", "val", "test"] and parts["train"].images.shape[1:] == (28, 28, 1)
    pooled = read_npz(bundled_path("kermany-cxr"))
    assert set(pooled) == {"pool", "class_names"} and pooled["pool"].patient_ids is not None
