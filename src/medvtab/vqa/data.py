"""MedVQA and caption readers for the sets' own published formats, a leakage guard and cached image loading.

VQA sets (:func:`load_vqa`), by registered name under the MedVQA data root or by a folder in their format:

- ``vqa-rad``: ``VQA_RAD Dataset Public.json`` and ``images/``; ``phrase_type`` freeform/para = train,
  test_freeform/test_para = test. No validation split exists.
- ``slake``: ``{train,validate,test}.json`` and ``imgs/``; English questions unless ``lang="zh"``.
- ``pmc-vqa``: ``{train,test}.csv`` (or the v2 ``*_2.csv``) with columns Figure_path, Question, Answer and
  Choice A..D, images under ``images/`` or ``figures/``. Every question is multiple choice, so it is "closed"
  and its choices are appended to the question text (the answer is the choice text, not its letter).

Caption sets (:func:`load_captions`): ``medpix`` (MedPix 2.0: ``descriptions_{train,dev,test}.jsonl``,
``images/<image>.jpg`` or ``.png``) and ``pmc-oa`` (``{train,valid,test}.jsonl`` lines ``{"image", "caption"}``, images
under ``images/`` or ``caption_T060_filtered_top4_sep_v0_subfigures/``). Rows without a caption are skipped
and their number logged.

Every image path is checked once at load time, so a missing file fails here with its name rather than in the
middle of training. User errors (a missing file or field, bad JSON, an unknown name, split or language) raise
:class:`~medvtab.errors.MedvtabError` in one line.
"""
from __future__ import annotations

import csv
import functools
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from medvtab.data.images import read_image
from medvtab.data.leakage import image_digest
from medvtab.data.loading import shared_root
from medvtab.errors import MedvtabError, first_line
from medvtab.vqa.metrics import normalize_answer

log = logging.getLogger(__name__)

VQA_SETS = ("vqa-rad", "slake", "pmc-vqa")
CAPTION_SETS = ("medpix", "pmc-oa")
VQA_DATA_ENV = "MEDVTAB_VQA_DATA"
LANGS = ("en", "zh")
IMAGE_CACHE_SIZE = 4096  # decoded images kept by load_images: ~0.6 GB at 224 px, enough for all sets here
_FOLDERS = {"vqa-rad": "vqa_rad", "slake": "slake", "pmc-vqa": "pmc_vqa", "medpix": "medpix2", "pmc-oa": "pmc_oa"}
_SPLITS = {"vqa-rad": ("train", "test"), "slake": ("train", "val", "test"), "pmc-vqa": ("train", "test"),
           "medpix": ("train", "dev", "test"), "pmc-oa": ("train", "val", "test")}
_SPLIT_ALIASES = {"slake": {"validate": "val"}, "medpix": {"val": "dev"}, "pmc-oa": {"valid": "val"}}
RAD_FILE = "VQA_RAD Dataset Public.json"
_RAD_PHRASES = {"freeform": "train", "para": "train", "test_freeform": "test", "test_para": "test"}
_RAD_TYPE_TYPOS = {"ATRIB": "ATTRIB", "PRSE": "PRES"}  # one row each in the public VQA-RAD file
SLAKE_FILES = {"train": "train.json", "val": "validate.json", "test": "test.json"}
_PMC_VQA_IMAGES = ("images", "figures")
_PMC_OA_IMAGES = ("images", "caption_T060_filtered_top4_sep_v0_subfigures")
_CHOICE_PREFIX = re.compile(r"^\s*[A-D]\s*:\s*")


@dataclass(frozen=True)
class VQAItem:
    image: Path  # absolute image file
    image_id: str  # unique within its set: 'synpic54610' (VQA-RAD), 'xmlab1' (SLAKE), the file stem otherwise
    question: str
    answer: str  # the source's answer text (whitespace-stripped)
    answer_type: str  # "closed" | "open"
    question_type: str  # VQA-RAD question_type (first of a list), SLAKE content_type, "pmc-vqa"
    qid: str


@dataclass(frozen=True)
class CaptionItem:
    image: Path
    image_id: str  # MedPix: the synpic id ('synpic40275'), shared with VQA-RAD; PMC-OA: the file stem
    caption: str


# ---------------------------------------------------------------- locating a set


def _default_root() -> Path | None:
    """``$MEDVTAB_VQA_DATA``, else a ``shared/vqa`` folder beside the project if there is one, else None."""
    return shared_root(VQA_DATA_ENV, "vqa")


def vqa_root(root: str | Path | None = None) -> Path:
    """The MedVQA data root: ``root`` if given, else the default; an error that says how to set one."""
    path = Path(root) if root is not None else _default_root()
    if path is None:
        raise MedvtabError(f"no MedVQA data root: pass one (--data-root DIR) or set {VQA_DATA_ENV}")
    if not path.is_dir():
        raise MedvtabError(f"MedVQA data root {path}: not a folder")
    return path.resolve()


def set_key(name: str) -> str:
    """A registered name with case, spaces and underscores forgiven ('VQA_RAD' -> 'vqa-rad')."""
    return re.sub(r"[\s_]+", "-", name.strip().lower())


def _detect(folder: Path) -> str | None:
    """Which published format ``folder`` holds, judged by the files present."""
    if (folder / RAD_FILE).is_file():
        return "vqa-rad"
    if (folder / "imgs").is_dir() and any((folder / f).is_file() for f in SLAKE_FILES.values()):
        return "slake"
    if any((folder / f"{s}{v}.csv").is_file() for s in ("train", "test") for v in ("", "_2")):
        return "pmc-vqa"
    if any(folder.glob("descriptions_*.jsonl")):
        return "medpix"
    if any((folder / f"{s}.jsonl").is_file() for s in ("train", "valid", "val", "test")):
        return "pmc-oa"
    return None


def _locate(name_or_path: str | Path, kinds: tuple[str, ...], root: str | Path | None) -> tuple[str, Path]:
    """(set name, folder) for a registered name under the data root, or for a folder in one of the formats."""
    key = set_key(str(name_or_path))
    if key in kinds:
        folder = vqa_root(root) / _FOLDERS[key]
        if not folder.is_dir():
            raise MedvtabError(f"{key}: not found under the MedVQA data root (expected folder {folder})")
        return key, folder
    folder = Path(name_or_path)
    if not folder.is_dir():
        raise MedvtabError(f"unknown set '{name_or_path}': expected one of {', '.join(kinds)} or a folder in "
                           f"one of their formats")
    kind = _detect(folder)
    if kind not in kinds:
        raise MedvtabError(f"{folder}: not a {' / '.join(kinds)} folder (expected the files of one of those "
                           f"formats, e.g. '{RAD_FILE}', train.json with imgs/, train.csv, train.jsonl)")
    return kind, folder.resolve()


def set_folder(name_or_path: str | Path, root: str | Path | None = None) -> Path:
    """The folder of a VQA or caption set, by registered name or folder: two references to one set agree."""
    return _locate(name_or_path, VQA_SETS + CAPTION_SETS, root)[1]


def is_present(name_or_path: str | Path, root: str | Path | None = None) -> bool:
    """Whether a registered set's folder is under the data root (a folder given by path must exist: an error)."""
    key = set_key(str(name_or_path))
    if key in _FOLDERS:
        return (vqa_root(root) / _FOLDERS[key]).is_dir()
    return set_folder(name_or_path, root).is_dir()


def _split(kind: str, split: str) -> str:
    """The canonical split name, or an error that lists the splits ``kind`` has."""
    split = _SPLIT_ALIASES.get(kind, {}).get(split, split)
    if split not in _SPLITS[kind]:
        raise MedvtabError(f"{kind}: unknown split '{split}' (expected one of: {', '.join(_SPLITS[kind])})")
    return split


def _image_folder(folder: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (folder / name).is_dir():
            return folder / name
    raise MedvtabError(f"{folder}: no image folder (expected {' or '.join(n + '/' for n in names)})")


def _check_images(paths: Iterable[Path], source: Path) -> None:
    """Fail at load time, naming the first missing image, rather than mid-training."""
    missing = sorted({p for p in paths if not p.is_file()})
    if missing:
        raise MedvtabError(f"{source}: {len(missing)} referenced image(s) missing, first {missing[0]}")


# ---------------------------------------------------------------- safe readers


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise MedvtabError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise MedvtabError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError:
        raise MedvtabError(f"{path}: not UTF-8 text (expected a JSON file)") from None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise MedvtabError(f"{path}: file not found")
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise MedvtabError(f"{path}: not UTF-8 text (expected JSON lines)") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise MedvtabError(f"{path}: line {n} is not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise MedvtabError(f"{path}: line {n} is not a JSON object")
        rows.append(row)
    return rows


def _records(data: Any, path: Path) -> list[dict]:
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise MedvtabError(f"{path}: expected a JSON list of objects (one per question)")
    return data


def read_records(path: Path) -> list[dict]:
    """A JSON file that holds a list of objects (VQA-RAD's and SLAKE's question files), read and checked."""
    return _records(_read_json(path), path)


def _field(row: dict, key: str, path: Path, where: str) -> Any:
    if key not in row or row[key] is None:
        raise MedvtabError(f"{path}: {where} has no '{key}' field")
    return row[key]


def _answer_type(value: Any, path: Path, where: str) -> str:
    """'closed' / 'open' from the sources' 'CLOSED' / 'OPEN' (two VQA-RAD rows carry a trailing space)."""
    kind = str(value).strip().lower()
    if kind not in ("closed", "open"):
        raise MedvtabError(f"{path}: {where} has answer_type '{value}' (expected CLOSED or OPEN)")
    return kind


# ---------------------------------------------------------------- VQA readers


def _rad_question_type(value: Any) -> str:
    """The first type of a comma list ('POS, PRES' -> 'POS'), upper-cased, the file's two typos mended."""
    first = str(value).split(",")[0].strip().upper()
    return _RAD_TYPE_TYPOS.get(first, first)


def _load_vqa_rad(folder: Path, split: str) -> list[VQAItem]:
    path = folder / RAD_FILE
    images = folder / "images"
    items = []
    for i, row in enumerate(read_records(path)):
        where = f"entry {i}"
        phrase = str(_field(row, "phrase_type", path, where))
        if phrase not in _RAD_PHRASES:
            raise MedvtabError(f"{path}: {where} has phrase_type '{phrase}' (expected one of "
                               f"{', '.join(_RAD_PHRASES)})")
        if _RAD_PHRASES[phrase] != split:
            continue
        name = str(_field(row, "image_name", path, where))
        items.append(VQAItem(
            image=images / name, image_id=PurePosixPath(name).stem,
            question=str(_field(row, "question", path, where)).strip(),
            answer=str(_field(row, "answer", path, where)).strip(),
            answer_type=_answer_type(_field(row, "answer_type", path, where), path, where),
            question_type=_rad_question_type(_field(row, "question_type", path, where)),
            qid=str(_field(row, "qid", path, where))))
    return items


def _load_slake(folder: Path, split: str, lang: str) -> list[VQAItem]:
    path = folder / SLAKE_FILES[split]
    images = folder / "imgs"
    items = []
    for i, row in enumerate(read_records(path)):
        where = f"entry {i}"
        if str(_field(row, "q_lang", path, where)) != lang:
            continue
        name = PurePosixPath(str(_field(row, "img_name", path, where)))
        items.append(VQAItem(
            image=images / name, image_id=name.parent.name or name.stem,
            question=str(_field(row, "question", path, where)).strip(),
            answer=str(_field(row, "answer", path, where)).strip(),
            answer_type=_answer_type(_field(row, "answer_type", path, where), path, where),
            question_type=str(_field(row, "content_type", path, where)).strip(),
            qid=str(_field(row, "qid", path, where))))
    return items


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise MedvtabError(f"{path}: no column '{missing[0]}' (expected {', '.join(required)})")
            return list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise MedvtabError(f"{path}: not a readable CSV file ({err})") from None


def _cell(row: dict, key: str, path: Path, n: int) -> str:
    """A non-empty cell (a short row leaves None in the missing cells)."""
    value = (row.get(key) or "").strip()
    if not value:
        raise MedvtabError(f"{path}: row {n} has an empty '{key}'")
    return value


def _pmc_question(question: str, row: dict) -> str:
    """The question with its choices appended, so a model sees what it chooses from."""
    choices = [_CHOICE_PREFIX.sub("", row.get(f"Choice {c}") or "").strip() for c in "ABCD"]
    listed = "; ".join(f"{c}: {text}" for c, text in zip("ABCD", choices) if text)
    return f"{question} Choices: {listed}" if listed else question


def _load_pmc_vqa(folder: Path, split: str) -> list[VQAItem]:
    path = next((folder / f"{split}{v}.csv" for v in ("", "_2") if (folder / f"{split}{v}.csv").is_file()),
                folder / f"{split}.csv")
    if not path.is_file():
        raise MedvtabError(f"{path}: file not found (expected {split}.csv or {split}_2.csv)")
    images = _image_folder(folder, _PMC_VQA_IMAGES)
    items = []
    for i, row in enumerate(_read_csv(path, ("Figure_path", "Question", "Answer"))):
        n = i + 2  # counting the header as row 1
        name = PurePosixPath(_cell(row, "Figure_path", path, n))
        items.append(VQAItem(
            image=images / name, image_id=name.stem, question=_pmc_question(_cell(row, "Question", path, n), row),
            answer=_CHOICE_PREFIX.sub("", _cell(row, "Answer", path, n)).strip(), answer_type="closed",
            question_type="pmc-vqa", qid=(row.get("index") or "").strip() or f"{split}-{i}"))
    return items


def load_vqa(name_or_path: str | Path, split: str, *, lang: str = "en",
             root: str | Path | None = None) -> list[VQAItem]:
    """The items of one split of a VQA set, by registered name (under ``root``) or by folder.

    ``lang`` picks SLAKE's English or Chinese questions; the other sets are English only.
    """
    kind, folder = _locate(name_or_path, VQA_SETS, root)
    split = _split(kind, split)
    if lang not in LANGS:
        raise MedvtabError(f"unknown lang '{lang}' (expected one of: {', '.join(LANGS)})")
    if lang != "en" and kind != "slake":
        raise MedvtabError(f"lang '{lang}': {kind} is English only (only slake has Chinese questions)")
    if kind == "vqa-rad":
        items = _load_vqa_rad(folder, split)
    elif kind == "slake":
        items = _load_slake(folder, split, lang)
    else:
        items = _load_pmc_vqa(folder, split)
    _check_images((item.image for item in items), folder)
    return items


# ---------------------------------------------------------------- caption readers


def _caption(value: Any) -> str:
    """Whitespace collapsed (MedPix captions hold doubled spaces); '' for a missing caption."""
    return " ".join(str(value).split()) if isinstance(value, str) else ""


def _medpix_image(images: Path, name: str) -> Path:
    """``<name>.jpg`` (the converted copy), else the original release's ``<name>.png``."""
    jpg = images / f"{name}.jpg"
    return jpg if jpg.is_file() or not (images / f"{name}.png").is_file() else images / f"{name}.png"


def _load_medpix(folder: Path, split: str) -> list[tuple[Path, str, str]]:
    path = folder / f"descriptions_{split}.jsonl"
    rows = []
    for n, row in enumerate(_read_jsonl(path), 1):
        name = str(_field(row, "image", path, f"row {n}"))
        description = row.get("Description")
        caption = _caption(description.get("Caption") if isinstance(description, dict) else None)
        rows.append((_medpix_image(folder / "images", name), name.rsplit("_", 1)[-1], caption))
    return rows


def _load_pmc_oa(folder: Path, split: str) -> list[tuple[Path, str, str]]:
    names = ("valid.jsonl", "val.jsonl") if split == "val" else (f"{split}.jsonl",)
    path = next((folder / n for n in names if (folder / n).is_file()), folder / names[0])
    images = _image_folder(folder, _PMC_OA_IMAGES)
    rows = []
    for n, row in enumerate(_read_jsonl(path), 1):
        name = PurePosixPath(str(_field(row, "image", path, f"row {n}")))
        rows.append((images / name, name.stem, _caption(row.get("caption"))))
    return rows


def load_captions(name_or_path: str | Path, split: str, *, root: str | Path | None = None) -> list[CaptionItem]:
    """The captioned images of one split of a caption set; rows with no caption are skipped (and counted)."""
    kind, folder = _locate(name_or_path, CAPTION_SETS, root)
    split = _split(kind, split)
    rows = _load_medpix(folder, split) if kind == "medpix" else _load_pmc_oa(folder, split)
    items = [CaptionItem(image=image, image_id=image_id, caption=caption) for image, image_id, caption in rows
             if caption]
    if len(items) < len(rows):
        log.warning("%s %s: skipped %d of %d rows with no caption", kind, split, len(rows) - len(items), len(rows))
    _check_images((item.image for item in items), folder)
    return items


# ---------------------------------------------------------------- leakage guard


@functools.lru_cache(maxsize=None)
def image_file_digest(path: Path) -> str:
    """:func:`medvtab.data.leakage.image_digest` of the file's decoded pixels at their own size: the same picture
    under another name, or losslessly re-encoded, has the same digest."""
    try:
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise MedvtabError(f"{path}: unreadable image ({first_line(err)})") from None
    return image_digest(pixels)


def drop_leaked(train: list, held_out: list) -> tuple[list, int]:
    """Training items (VQA or caption) without the images of ``held_out``: same ``image_id`` or same pixels.

    Meant for a caption or general-VQA set against a VQA test split (19 MedPix images are VQA-RAD images,
    under the same synpic id but resized differently, so the id catches them and the digest catches copies
    under other names). Not for a VQA set's own train split: VQA-RAD's train and test share 202 of the test
    split's 203 images by design (its split is by question).
    """
    ids = {item.image_id for item in held_out}
    digests = {image_file_digest(path) for path in {item.image for item in held_out}}
    kept = [item for item in train if item.image_id not in ids and image_file_digest(item.image) not in digests]
    return kept, len(train) - len(kept)


# ---------------------------------------------------------------- images


def load_image(path: Path, size: int) -> torch.Tensor:
    """uint8 ``(3, size, size)``: :func:`medvtab.data.images.read_image` (bilinear, bombs refused, more than 8 bits
    rescaled), grey replicated to three channels."""
    image = torch.from_numpy(np.array(read_image(Path(path), size))).permute(2, 0, 1)  # a writable copy
    return image.expand(3, -1, -1).contiguous()


_cached_image = functools.lru_cache(maxsize=IMAGE_CACHE_SIZE)(load_image)


def load_images(paths: list[Path], size: int) -> torch.Tensor:
    """uint8 ``(N, 3, size, size)``; each distinct (path, size) is decoded once per process (questions share
    images: VQA-RAD asks ~7 questions per image, so epochs would otherwise decode the same files again)."""
    if not paths:
        return torch.empty((0, 3, size, size), dtype=torch.uint8)
    return torch.stack([_cached_image(Path(p), size) for p in paths])


def closed_candidates(items: list[VQAItem]) -> list[str]:
    """The distinct normalised answers of the closed items, sorted: the vocabulary for restricted decoding."""
    return sorted({normalize_answer(item.answer) for item in items if item.answer_type == "closed"})
