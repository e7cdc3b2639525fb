"""The pre-training set of ``tiny-radiology``, the MedVQA vision side that has seen radiology.

Only real radiology images whose licences allow shipping weights derived from them:

- Kermany paediatric chest X-rays (CC BY 4.0, ``kermany_cxr_64.npz``): normal, bacterial or viral pneumonia (the
  ``subtype``); up to ``kermany_images`` images of whole patients drawn at random (seeded), so the X-rays do not
  drown the VQA sets' images; 15 % of the drawn patients are the linear probe's held-out split.
- SLAKE's training images (CC BY 4.0): the image's modality and location (the fields its questions carry). SLAKE's
  validation images are the probe's held-out split.
- VQA-RAD's images that no test question uses (CC0): the organ (head, chest, abdomen); 20 % held out.

Never MedPix 2.0 (its licence is unverified), and never an image of VQA-RAD's or SLAKE's test split: those are
dropped by id and by pixels (:func:`medvtab.vqa.data.drop_leaked`), and tests/vqa/test_radiology.py checks every
image of the written file against both test splits. VQA images are read as the VQA vision side reads them
(:func:`medvtab.vqa.data.load_image`). The result is a MedMNIST-style ``.npz`` for ``medvtab pretrain --variant
tiny-radiology``, with each image's source set in ``{split}_source``.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from medvtab.atomic import atomic_write
from medvtab.data.loading import default_data_root
from medvtab.errors import MedvtabError
from medvtab.vqa import data as vqa_data

KERMANY_FILE = "kermany_cxr/kermany_cxr_64.npz"
KERMANY_SUBTYPES = {"normal": "normal", "bacteria": "bacterial pneumonia", "virus": "viral pneumonia"}
PROBE_FRACTION = {"kermany-cxr": 0.15, "vqa-rad": 0.2}
SIZE = 64


def kermany_part(path: Path, max_images: int, seed: int) -> dict[str, list]:
    """(image, class name) lists per split of whole Kermany patients, drawn at random up to ``max_images``."""
    if not path.is_file():
        raise MedvtabError(f"{path}: no such file (the Kermany chest X-rays at 64 px; --kermany PATH)")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("images", "patient_ids", "subtype") if k not in z.files]
        if missing:
            raise MedvtabError(f"{path}: expected arrays 'images', 'patient_ids' and 'subtype', missing {missing}")
        images, patients, subtype = z["images"], z["patient_ids"].astype(str), z["subtype"].astype(str)
    unknown = sorted(set(subtype) - set(KERMANY_SUBTYPES))
    if unknown:
        raise MedvtabError(f"{path}: 'subtype' has {unknown}; expected {sorted(KERMANY_SUBTYPES)}")
    chosen, taken = [], 0
    for patient in np.random.default_rng(seed).permutation(np.unique(patients)):
        rows = np.flatnonzero(patients == patient)
        if taken + len(rows) <= max_images:
            chosen.append(rows)
            taken += len(rows)
    held = int(round(PROBE_FRACTION["kermany-cxr"] * len(chosen)))
    out = {"train": [], "test": []}
    for n, rows in enumerate(chosen):
        for r in rows:
            image = images[r] if images[r].ndim == 3 else np.repeat(images[r][..., None], 3, axis=-1)
            out["test" if n < held else "train"].append(
                (image, f"Kermany chest X-ray: {KERMANY_SUBTYPES[subtype[r]]}"))
    return out


def _image_array(path: Path) -> np.ndarray:
    return vqa_data.load_image(path, SIZE).permute(1, 2, 0).numpy()


def slake_image_fields(folder: Path, split: str, lang: str = "en") -> dict[str, tuple[str, str]]:
    """SLAKE image name (``xmlab1/source.jpg``) -> (modality, location), the fields its ``lang`` questions carry
    (one pair per image, checked), in the order the split's file first names them."""
    path = folder / vqa_data.SLAKE_FILES[split]
    fields: dict[str, set] = {}
    for i, row in enumerate(vqa_data.read_records(path)):
        if row.get("q_lang") != lang:
            continue
        try:
            fields.setdefault(str(row["img_name"]), set()).add((str(row["modality"]), str(row["location"])))
        except KeyError as err:
            raise MedvtabError(f"{path}: entry {i} has no field {err}") from None
    clash = {name: sorted(v) for name, v in fields.items() if len(v) > 1}
    if clash:
        name, pairs = next(iter(clash.items()))
        raise MedvtabError(f"{path}: image {name} has questions with different modality/location: {pairs}")
    return {name: v.pop() for name, v in fields.items()}


def slake_part(root, held_out: list) -> tuple[dict[str, list], int]:
    """SLAKE train images (train split) and validation images (test split) with their modality and location."""
    folder = vqa_data.set_folder("slake", root)
    out, dropped = {}, 0
    for split, part in (("train", "train"), ("val", "test")):
        labels = {name: f"SLAKE: {modality}, {location}"
                  for name, (modality, location) in slake_image_fields(folder, split).items()}
        items = list({i.image: i for i in vqa_data.load_vqa("slake", split, root=root)}.values())
        items, n = vqa_data.drop_leaked(items, held_out)
        dropped += n
        out[part] = [(_image_array(i.image), labels[str(i.image.relative_to(folder / "imgs").as_posix())])
                     for i in items]
    return out, dropped


def vqa_rad_part(root, held_out: list, seed: int) -> tuple[dict[str, list], int]:
    """VQA-RAD images of no test question with their organ; 20 % (seeded) held out."""
    folder = vqa_data.set_folder("vqa-rad", root)
    path = folder / vqa_data.RAD_FILE
    organ = {}
    for i, row in enumerate(vqa_data.read_records(path)):
        if "image_organ" not in row or "image_name" not in row:
            raise MedvtabError(f"{path}: entry {i} has no 'image_organ' or 'image_name'")
        organ[str(row["image_name"])] = str(row["image_organ"]).strip().lower()
    items = list({i.image: i for i in vqa_data.load_vqa("vqa-rad", "train", root=root)}.values())
    items, dropped = vqa_data.drop_leaked(items, held_out)
    items.sort(key=lambda i: i.image_id)
    held = set(np.random.default_rng(seed).permutation(len(items))[:int(round(PROBE_FRACTION["vqa-rad"] *
                                                                              len(items)))])
    out = {"train": [], "test": []}
    for n, item in enumerate(items):
        out["test" if n in held else "train"].append((_image_array(item.image),
                                                      f"VQA-RAD: {organ[item.image.name]}"))
    return out, dropped


def write_npz(path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed zip timestamps: the same arrays give the same bytes, so the sha256 in
    ``tiny-radiology``'s model card identifies the set a rebuild gives."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue(),
                        compress_type=zipfile.ZIP_DEFLATED)


def build_radiology_set(out: Path, *, root=None, kermany: Path | None = None, kermany_images: int = 2000,
                        seed: int = 0) -> dict:
    """Write the pre-training ``.npz`` to ``out``; returns counts per source and split and the dropped test images."""
    out = Path(out)
    if out.suffix != ".npz":
        raise MedvtabError(f"{out}: the output must be a .npz file")
    if out.exists():
        raise MedvtabError(f"{out}: exists; choose a new --out")
    if kermany is None:
        data_root = default_data_root()
        if data_root is None:
            raise MedvtabError("no data root for the Kermany chest X-rays: pass --kermany PATH or set MEDVTAB_DATA")
        kermany = data_root / KERMANY_FILE
    held_out = [i for ref in ("vqa-rad", "slake") for i in vqa_data.load_vqa(ref, "test", root=root)]
    slake, slake_dropped = slake_part(root, held_out)
    rad, rad_dropped = vqa_rad_part(root, held_out, seed)
    parts = {"kermany-cxr": kermany_part(Path(kermany), kermany_images, seed), "slake": slake, "vqa-rad": rad}
    names = sorted({label for part in parts.values() for rows in part.values() for _, label in rows})
    arrays, counts = {"class_names": np.array(names)}, {}
    for split in ("train", "test"):
        rows = [(image, label, source) for source, part in parts.items() for image, label in part[split]]
        arrays[f"{split}_images"] = np.stack([r[0] for r in rows]).astype(np.uint8)
        arrays[f"{split}_labels"] = np.array([names.index(r[1]) for r in rows], dtype=np.int64)
        arrays[f"{split}_source"] = np.array([r[2] for r in rows])
        counts[split] = {source: len(part[split]) for source, part in parts.items()}

    atomic_write(out, lambda tmp: write_npz(tmp, arrays))
    return {"out": str(out), "classes": len(names), "images": counts,
            "test_images_dropped": {"slake": slake_dropped, "vqa-rad": rad_dropped}}
