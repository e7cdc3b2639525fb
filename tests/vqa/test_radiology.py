"""tiny-radiology's pre-training set: real radiology images only, never a VQA-RAD or SLAKE test image (by the pixels
the vision side reads), never MedPix; Kermany patients on one side of the probe's split; and the bundled expert was
trained on exactly the set a rebuild gives (the card's sha256), so what holds for the rebuild holds for it."""
import json
from pathlib import Path

import numpy as np
import pytest

from medvtab.backbones import tiny
from medvtab.data.leakage import image_digest
from medvtab.data.loading import default_data_root
from medvtab.engine.pretrain import sha256
from medvtab.errors import MedvtabError
from medvtab.vqa import data as vqa_data
from medvtab.vqa.radiology import KERMANY_FILE, SIZE, build_radiology_set

pytestmark = pytest.mark.usefixtures("shared_vqa_data")
CARD = json.loads(Path(tiny.bundled_weights("tiny-radiology")).with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def kermany():
    root = default_data_root()
    path = None if root is None else root / KERMANY_FILE
    if path is None or not path.is_file():
        pytest.skip(f"real data file missing: {KERMANY_FILE} (set MEDVTAB_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory, kermany):
    """The set as the bundled expert's card says it was built (the defaults)."""
    out = tmp_path_factory.mktemp("radiology") / "radiology_64.npz"
    summary = build_radiology_set(out, kermany=kermany)
    with np.load(out, allow_pickle=False) as z:
        return out, summary, {k: z[k] for k in z.files}


def _test_digests() -> set[str]:
    items = [i for name in ("vqa-rad", "slake") for i in vqa_data.load_vqa(name, "test")]
    return {image_digest(vqa_data.load_image(p, SIZE).permute(1, 2, 0).numpy()) for p in {i.image for i in items}}


def test_no_test_image_of_either_set_is_in_the_pretraining_set(built):
    _, summary, arrays = built
    test = _test_digests()
    assert len(test) == 203 + 96  # VQA-RAD's and SLAKE's distinct test images
    for split in ("train", "test"):
        digests = {image_digest(im) for im in arrays[f"{split}_images"]}
        assert not digests & test, split
        assert set(arrays[f"{split}_source"]) == {"kermany-cxr", "slake", "vqa-rad"}  # never medpix
    assert summary["test_images_dropped"] == {"slake": 0, "vqa-rad": 202}  # what the guard removed
    assert summary["images"]["train"] == {"kermany-cxr": 1724, "slake": 450, "vqa-rad": 89}


def test_without_the_guard_vqa_rad_test_images_would_be_in_it():
    """So the test above can fail: VQA-RAD's train questions use 202 of its 203 test images."""
    train = {image_digest(vqa_data.load_image(i.image, SIZE).permute(1, 2, 0).numpy())
             for i in vqa_data.load_vqa("vqa-rad", "train")}
    assert len(train & _test_digests()) == 202


def test_labels_sources_and_patient_split(built, kermany):
    _, summary, arrays = built
    names = list(arrays["class_names"])
    assert len(names) == summary["classes"] == 20
    assert {n.split(":")[0] for n in names} == {"Kermany chest X-ray", "SLAKE", "VQA-RAD"}
    for split in ("train", "test"):
        labels = arrays[f"{split}_labels"]
        assert arrays[f"{split}_images"].shape[1:] == (SIZE, SIZE, 3) and labels.max() < len(names)
        for source, prefix in (("kermany-cxr", "Kermany"), ("slake", "SLAKE"), ("vqa-rad", "VQA-RAD")):
            mine = labels[arrays[f"{split}_source"] == source]
            assert all(names[i].startswith(prefix) for i in mine)
    with np.load(kermany, allow_pickle=False) as z:  # each Kermany image's patient, found by its pixels
        patient = {image_digest(np.repeat(im[..., None], 3, axis=-1)): p
                   for im, p in zip(z["images"], z["patient_ids"].astype(str))}
    sides = [{patient[image_digest(im)] for im, s in zip(arrays[f"{split}_images"], arrays[f"{split}_source"])
              if s == "kermany-cxr"} for split in ("train", "test")]
    assert sides[0] and sides[1] and not sides[0] & sides[1]


def test_the_bundled_expert_was_trained_on_this_set(built):
    out, _, _ = built
    assert CARD["data"]["sha256"] == sha256(out)
    assert CARD["data"]["sources"] == ["kermany-cxr", "slake", "vqa-rad"]
    assert "--no-flip" in CARD["command"] and CARD["architecture"]["img_size"] == SIZE


def test_bad_outputs_and_inputs_are_one_line_errors(tmp_path, kermany):
    with pytest.raises(MedvtabError, match="must be a .npz file"):
        build_radiology_set(tmp_path / "set.zip", kermany=kermany)
    (tmp_path / "old.npz").write_bytes(b"")
    with pytest.raises(MedvtabError, match="exists; choose a new --out"):
        build_radiology_set(tmp_path / "old.npz", kermany=kermany)
    with pytest.raises(MedvtabError, match="no such file"):
        build_radiology_set(tmp_path / "new.npz", kermany=tmp_path / "missing.npz")
    np.savez(tmp_path / "bare.npz", images=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(MedvtabError, match="missing \\['patient_ids', 'subtype'\\]"):
        build_radiology_set(tmp_path / "new.npz", kermany=tmp_path / "bare.npz")
    assert not (tmp_path / "new.npz").exists()
