"""MedVQA readers on the real sets in shared/vqa (VQA-RAD, SLAKE, MedPix 2.0), the leakage guard, image loading,
the PMC-VQA / PMC-OA readers on files written here in their published formats, and one-line user errors."""
import csv
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from medvtab.errors import MedvtabError
from medvtab.vqa import data
from medvtab.vqa.data import (CaptionItem, closed_candidates, drop_leaked, load_captions, load_image, load_images,
                              load_vqa, vqa_root)
from medvtab.vqa.metrics import normalize_answer


@pytest.fixture(scope="module")
def root() -> Path:
    found = data._default_root()
    if found is None or not (found / "vqa_rad").is_dir():
        pytest.skip("real MedVQA data absent: set MEDVTAB_VQA_DATA or place it in shared/vqa beside the project")
    return found


@pytest.fixture(scope="module")
def rad(root):
    return {split: load_vqa("vqa-rad", split, root=root) for split in ("train", "test")}


@pytest.fixture(scope="module")
def medpix(root):
    return [item for split in ("train", "dev", "test") for item in load_captions("medpix", split, root=root)]


def kinds(items) -> tuple[int, int]:
    counts = Counter(item.answer_type for item in items)
    return counts["closed"], counts["open"]


# ---------------------------------------------------------------- the real sets


def test_vqa_rad_splits_by_phrase_type(rad):
    assert len(rad["train"]) == 1797 and kinds(rad["train"]) == (1027, 770)
    assert len(rad["test"]) == 451 and kinds(rad["test"]) == (272, 179)
    every = rad["train"] + rad["test"]
    assert len({item.qid for item in every}) == 2248
    assert all(item.image_id.startswith("synpic") and item.image.name == item.image_id + ".jpg" for item in every)
    assert all(isinstance(item.answer, str) for item in every) and "12" in {item.answer for item in every}
    assert all("," not in item.question_type and item.question_type.isupper() for item in every)


def test_vqa_rad_has_no_validation_split(root):
    with pytest.raises(MedvtabError, match="vqa-rad: unknown split 'val' .*train, test"):
        load_vqa("vqa-rad", "val", root=root)


def test_slake_english_by_default_and_chinese_on_request(root):
    train, val, test = (load_vqa("slake", split, root=root) for split in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (4919, 1053, 1061)
    assert kinds(test) == (416, 645)
    assert load_vqa("slake", "validate", root=root) == val
    assert train[0].image_id.startswith("xmlab") and train[0].image.parent.name == train[0].image_id
    chinese = load_vqa("slake", "train", lang="zh", root=root)
    assert len(chinese) == 4916 and any("\u4e00" <= ch <= "\u9fff" for ch in chinese[0].question)


def test_every_vqa_image_exists(root, rad):
    slake = [item for split in ("train", "val", "test") for item in load_vqa("slake", split, root=root)]
    assert all(item.image.is_absolute() and item.image.is_file() for item in rad["train"] + rad["test"] + slake)


def test_medpix_captions(root, medpix):
    for split, rows in (("train", 1653), ("dev", 197), ("test", 200)):
        raw = [json.loads(line) for line in (root / "medpix2" / f"descriptions_{split}.jsonl").open()]
        with_caption = sum(1 for row in raw if (row.get("Description") or {}).get("Caption", "").strip())
        assert len(raw) == rows and len(load_captions("medpix", split, root=root)) == with_caption
    assert load_captions("medpix", "val", root=root) == load_captions("medpix", "dev", root=root)
    assert medpix[0].image_id == "synpic40275" and medpix[0].image.name == "MPX1024_synpic40275.jpg"
    assert all(item.caption == " ".join(item.caption.split()) and item.image.is_file() for item in medpix)


def test_medpix_images_leaking_into_vqa_rad_test_are_dropped(rad, medpix):
    test_ids = {item.image_id for item in rad["test"]}
    leaked = [item for item in medpix if item.image_id in test_ids]
    assert len({item.image_id for item in leaked}) == 10
    kept, dropped = drop_leaked(medpix, rad["test"])
    assert dropped == len(leaked) and kept == [item for item in medpix if item.image_id not in test_ids]
    assert drop_leaked(medpix, rad["train"] + rad["test"])[1] == 19


def test_drop_leaked_catches_a_copy_under_another_name(tmp_path, rad):
    copy = tmp_path / "renamed.jpg"
    shutil.copyfile(rad["test"][0].image, copy)
    other = tmp_path / "other.jpg"
    shutil.copyfile(rad["train"][0].image, other)
    png = tmp_path / "reencoded.png"  # the same pixels in other bytes: the digest is of the decoded image
    Image.open(rad["test"][0].image).convert("RGB").save(png)
    train = [CaptionItem(copy, "renamed", "a copy"), CaptionItem(other, "other", "another image"),
             CaptionItem(png, "reencoded", "a lossless copy")]
    kept, dropped = drop_leaked(train, rad["test"][:1])
    assert dropped == 2 and kept == train[1:2]


def test_closed_candidates(rad):
    candidates = closed_candidates(rad["train"])
    assert candidates == sorted(set(candidates)) and {"yes", "no"} <= set(candidates)
    assert set(candidates) == {normalize_answer(i.answer) for i in rad["train"] if i.answer_type == "closed"}


def test_load_images(tmp_path, rad):
    path = rad["test"][0].image
    image = load_image(path, 64)
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    batch = load_images([path, rad["test"][1].image, path], 32)
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == torch.uint8 and torch.equal(batch[0], batch[2])
    grey = tmp_path / "grey.png"
    Image.new("L", (10, 20), 7).save(grey)
    assert torch.equal(load_image(grey, 8), torch.full((3, 8, 8), 7, dtype=torch.uint8))
    assert load_images([], 16).shape == (0, 3, 16, 16)


def test_unreadable_image_is_named(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    for path in (broken, tmp_path / "missing.jpg"):
        with pytest.raises(MedvtabError, match=path.name):
            load_image(path, 8)


def test_a_folder_is_read_in_its_detected_format(root, rad):
    assert load_vqa(root / "vqa_rad", "test") == rad["test"]
    assert load_vqa(str(root / "slake"), "val") == load_vqa("slake", "val", root=root)
    with pytest.raises(MedvtabError, match="not a vqa-rad / slake / pmc-vqa folder"):
        load_vqa(root / "medpix2", "train")


# ---------------------------------------------------------------- PMC-VQA and PMC-OA, published formats


def write_pmc_vqa(folder: Path, images: list[Path]) -> None:
    """PMC-VQA's train.csv / test.csv (choices carry their 'A:' prefix) with figures under images/."""
    (folder / "images").mkdir(parents=True)
    header = ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"]
    for split, image in zip(("train", "test"), images):
        shutil.copyfile(image, folder / "images" / f"PMC{split}_F1.jpg")
        with (folder / f"{split}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerow([f"PMC{split}_F1.jpg", "Which imaging modality is shown?", "CT scan",
                             "A:CT scan ", " B:MRI", " C:X-ray", " D:Ultrasound", "A"])


def test_pmc_vqa(tmp_path, rad):
    folder = tmp_path / "pmc_vqa"
    write_pmc_vqa(folder, [rad["train"][0].image, rad["test"][0].image])
    [item] = load_vqa(folder, "train")
    assert item.image == folder.resolve() / "images" / "PMCtrain_F1.jpg" and item.image_id == "PMCtrain_F1"
    assert item.question == "Which imaging modality is shown? Choices: A: CT scan; B: MRI; C: X-ray; D: Ultrasound"
    assert (item.answer, item.answer_type, item.question_type) == ("CT scan", "closed", "pmc-vqa")
    assert load_vqa("pmc-vqa", "test", root=tmp_path)[0].image_id == "PMCtest_F1"
    with pytest.raises(MedvtabError, match="pmc-vqa: unknown split 'val'"):
        load_vqa(folder, "val")


def test_pmc_vqa_missing_column(tmp_path):
    folder = tmp_path / "pmc"
    (folder / "images").mkdir(parents=True)
    (folder / "train.csv").write_text("Figure_path,Question\nx.jpg,What?\n")
    with pytest.raises(MedvtabError, match=r"train\.csv: no column 'Answer'"):
        load_vqa(folder, "train")


def test_pmc_oa(tmp_path, rad, caplog):
    folder = tmp_path / "pmc_oa"
    images = folder / "caption_T060_filtered_top4_sep_v0_subfigures"
    images.mkdir(parents=True)
    shutil.copyfile(rad["train"][0].image, images / "PMC1_Fig1_0.jpg")
    rows = [{"image": "PMC1_Fig1_0.jpg", "caption": "Axial  CT of the\nbrain."}, {"image": "PMC1_Fig2_0.jpg",
                                                                                 "caption": " "}]
    (folder / "valid.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with caplog.at_level(logging.WARNING, logger="medvtab.vqa.data"):
        items = load_captions(folder, "val")
    assert items == [CaptionItem(images.resolve() / "PMC1_Fig1_0.jpg", "PMC1_Fig1_0", "Axial CT of the brain.")]
    assert "skipped 1 of 2 rows" in caplog.text
    assert load_captions("pmc-oa", "valid", root=tmp_path) == items


# ---------------------------------------------------------------- user errors


def write_rad(folder: Path, rows) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / "VQA_RAD Dataset Public.json"
    path.write_text(rows if isinstance(rows, str) else json.dumps(rows))
    return path


RAD_ROW = {"qid": 1, "phrase_type": "freeform", "image_name": "synpic1.jpg", "question": "Is it?",
           "answer": "Yes", "answer_type": "CLOSED ", "question_type": "PRES, POS"}


def test_bad_json_names_the_file(tmp_path):
    write_rad(tmp_path, '[{"qid": 1,')
    with pytest.raises(MedvtabError, match="VQA_RAD Dataset Public.json: not valid JSON"):
        load_vqa(tmp_path, "train")


def test_missing_field_is_named(tmp_path):
    write_rad(tmp_path, [{k: v for k, v in RAD_ROW.items() if k != "answer"}])
    with pytest.raises(MedvtabError, match="Public.json: entry 0 has no 'answer' field"):
        load_vqa(tmp_path, "train")


def test_missing_image_is_named(tmp_path):
    write_rad(tmp_path, [RAD_ROW])
    with pytest.raises(MedvtabError, match="1 referenced image.* missing, first .*synpic1.jpg"):
        load_vqa(tmp_path, "train")
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "synpic1.jpg")
    [item] = load_vqa(tmp_path, "train")
    assert (item.answer_type, item.question_type, item.qid) == ("closed", "PRES", "1")


def test_unknown_names_splits_and_languages(root, tmp_path):
    with pytest.raises(MedvtabError, match="unknown set 'vqa-med': expected one of vqa-rad, slake, pmc-vqa"):
        load_vqa("vqa-med", "train", root=root)
    with pytest.raises(MedvtabError, match="unknown set 'medpix'"):
        load_vqa("medpix", "train", root=root)
    with pytest.raises(MedvtabError, match="slake: unknown split 'dev' .*train, val, test"):
        load_vqa("slake", "dev", root=root)
    with pytest.raises(MedvtabError, match="unknown lang 'fr'"):
        load_vqa("slake", "train", lang="fr", root=root)
    with pytest.raises(MedvtabError, match="vqa-rad is English only"):
        load_vqa("vqa-rad", "train", lang="zh", root=root)
    with pytest.raises(MedvtabError, match="pmc-oa: not found under the MedVQA data root"):
        load_captions("pmc-oa", "train", root=root)
    with pytest.raises(MedvtabError, match="medpix: unknown split 'validation'"):
        load_captions("MedPix", "validation", root=root)


def test_data_root_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv(data.VQA_DATA_ENV, str(tmp_path))
    assert vqa_root() == tmp_path.resolve() and vqa_root(tmp_path / "..") == tmp_path.parent.resolve()
    monkeypatch.setenv(data.VQA_DATA_ENV, str(tmp_path / "absent"))
    with pytest.raises(MedvtabError, match="absent: not a folder"):
        vqa_root()
    monkeypatch.setattr(data, "_default_root", lambda: None)
    with pytest.raises(MedvtabError, match=f"pass one .* or set {data.VQA_DATA_ENV}"):
        load_vqa("vqa-rad", "train")
