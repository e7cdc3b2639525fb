"""Fuzzing the parsers that read user files: every malformed input must end in medvtab's own one-line error
(MedvtabError, exit code 2 on the command line), never in another exception. Bounded: a fixed number of
examples per target (hypothesis), no deadline; the counts are printed at the end of the run. Inputs that once
found a bug are pinned with ``@example`` as regression cases."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from medvtab.errors import MedvtabError

from .conftest import TRIED

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def outcome(target: str, call) -> None:
    """``call()`` either succeeds or raises MedvtabError with a one-line message."""
    TRIED[target] += 1
    try:
        call()
    except MedvtabError as err:
        assert "\n" not in str(err), str(err)


def fresh(tmp_path_factory, name: str) -> Path:
    return tmp_path_factory.mktemp(name)


# ---------------------------------------------------------------- .npz tasks

ARRAY_KEYS = st.sampled_from(["images", "labels", "patient_ids", "class_names", "train_images", "train_labels",
                              "val_images", "val_labels", "test_images", "test_labels", "train_patient_ids",
                              "extra"])
DTYPES = st.sampled_from([np.uint8, np.int64, np.float32, np.int8, np.bool_, "U5"])


@st.composite
def arrays(draw):
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=4)))
    dtype = draw(DTYPES)
    size = int(np.prod(shape)) if shape else 1
    if dtype == "U5":
        values = draw(st.lists(st.text(max_size=5), min_size=size, max_size=size))
        return np.array(values, dtype="U5").reshape(shape)
    values = draw(st.lists(st.integers(-3, 300), min_size=size, max_size=size))
    return np.array(values).astype(dtype).reshape(shape)


@FUZZ
@given(st.dictionaries(ARRAY_KEYS, arrays(), max_size=6))
@example({"train_images": np.zeros((2, 4, 4), np.uint8), "train_labels": np.array([[0, 1, 2]])})
@example({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.zeros((3, 2), np.int64)})
def test_npz_tasks(tmp_path_factory, content):
    from medvtab.data.loading import load_task

    path = fresh(tmp_path_factory, "npz") / "task.npz"
    np.savez(path, **content)
    outcome("npz task", lambda: load_task(str(path), image_size=8))


@FUZZ
@given(st.binary(max_size=300))
def test_npz_bytes(tmp_path_factory, data):
    from medvtab.data.loading import load_task

    path = fresh(tmp_path_factory, "npzb") / "task.npz"
    path.write_bytes(data)
    outcome("npz bytes", lambda: load_task(str(path)))


# ---------------------------------------------------------------- prepared directories

CSV_CELLS = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)


@FUZZ
@given(meta=st.one_of(st.dictionaries(st.sampled_from(["name", "num_classes", "class_names", "image_size",
                                                          "task_type", "channels"]),
                                      st.one_of(st.integers(-2, 40), st.text(max_size=6),
                                                st.lists(st.text(max_size=3), max_size=3), st.none()), max_size=6),
                      st.text(max_size=20)),
       rows=st.lists(st.fixed_dictionaries({"index": CSV_CELLS, "source_path": CSV_CELLS, "label": CSV_CELLS,
                                            "patient_id": CSV_CELLS, "study_id": CSV_CELLS,
                                            "split": st.sampled_from(["", "train", "val", "test", "x"])}),
                     max_size=6),
       images=st.sampled_from([(0, 4, 4, 1), (3, 4, 4, 1), (6, 4, 4, 3), (6, 4, 4), (2, 4, 4, 2)]))
@example(meta={"name": None, "num_classes": None, "class_names": None, "image_size": None}, rows=[],
         images=(0, 4, 4, 1))  # found: task.json field types were not checked (TypeError)
def test_prepared_directories(tmp_path_factory, meta, rows, images):
    import csv

    from medvtab.data.manifest import COLUMNS
    from medvtab.data.loading import load_task

    root = fresh(tmp_path_factory, "prep")
    (root / "task.json").write_text(json.dumps(meta) if isinstance(meta, dict) else meta)
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows(rows)
    size = meta.get("image_size") if isinstance(meta, dict) and isinstance(meta.get("image_size"), int) else 4
    np.save(root / f"images_{size}.npy", np.zeros(images, np.uint8))
    outcome("prepared dir", lambda: load_task(str(root)))


# ---------------------------------------------------------------- raw sources: CSV, DICOM, NIfTI

@FUZZ
@given(st.text(max_size=200))
@example("image,a,b\n0.png,1,-1\n")
def test_csv_sources(tmp_path_factory, text):
    from PIL import Image

    from medvtab.data.convert import prepare

    raw = fresh(tmp_path_factory, "csv")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(raw / "0.png")
    (raw / "labels.csv").write_text(text, encoding="utf-8", errors="replace")
    outcome("csv source", lambda: prepare("f", raw, raw.parent / f"{raw.name}-out", layout="csv", image_size=4))


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["dicom", "nifti"]))
def test_dicom_and_nifti_files(tmp_path_factory, data, layout):
    from medvtab.data.convert import prepare

    raw = fresh(tmp_path_factory, layout)
    for cls in ("a", "b"):
        (raw / cls).mkdir()
        (raw / cls / ("x.dcm" if layout == "dicom" else "x.nii")).write_bytes(data)
    outcome(f"{layout} files", lambda: prepare("f", raw, raw.parent / f"{raw.name}-out", layout=layout,
                                               image_size=4))


@FUZZ
@given(st.integers(0, 3), st.binary(max_size=64))
def test_dicom_with_a_real_header_and_broken_pixels(tmp_path_factory, variant, pixels):
    """Real DICOM structure (pydicom-written) around random pixel data and odd attributes."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from medvtab.data.convert import prepare

    raw = fresh(tmp_path_factory, "dcm")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality = ["CT", "MR", "", "CR"][variant]
    ds.Rows, ds.Columns = [4, 0, 3, 8][variant], 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, variant % 2
    ds.PhotometricInterpretation = ["MONOCHROME2", "MONOCHROME1", "RGB", "PALETTE COLOR"][variant]
    ds.PixelData = pixels
    for cls in ("a", "b"):
        (raw / cls).mkdir()
        ds.save_as(raw / cls / "x.dcm", enforce_file_format=True)
    outcome("dicom structured", lambda: prepare("f", raw, raw.parent / f"{raw.name}-out", layout="dicom",
                                                image_size=4))


# ---------------------------------------------------------------- checkpoints

def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


@FUZZ
@given(st.one_of(st.binary(max_size=300),
                 st.dictionaries(st.sampled_from(["archive/data.pkl", "archive/version", "archive/data/0",
                                                  "x/data.pkl"]), st.binary(max_size=80), max_size=4)
                 .map(_zip_bytes)),
       st.sampled_from(["model.pth", "model.safetensors", "checkpoint.pt"]))
@example(b"", "checkpoint.pt")  # found: torch's empty-message error broke the message (IndexError)
def test_checkpoint_files(tmp_path_factory, data, name):
    from medvtab.backbones.checkpoint import read_state_dict
    from medvtab.engine.state import load_checkpoint

    path = fresh(tmp_path_factory, "ckpt") / name
    path.write_bytes(data)
    reader = load_checkpoint if name == "checkpoint.pt" else read_state_dict
    outcome(f"checkpoint {Path(name).suffix}", lambda: reader(path))


@FUZZ
@given(st.binary(max_size=200))
def test_run_directories(tmp_path_factory, data):
    from medvtab.engine.run import load_run

    run = fresh(tmp_path_factory, "run")
    (run / "config.json").write_bytes(data)
    (run / "adapter.safetensors").write_bytes(data[::-1])
    outcome("run directory", lambda: load_run(run))


# ---------------------------------------------------------------- grid configs (YAML)

YAML_KEYS = st.sampled_from(["name", "seeds", "tasks", "methods", "groups", "train", "train_size", "options",
                             "protocols", "general", "medical", "device", "unknown"])
YAML_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.floats(allow_nan=True),
                                     st.sampled_from(["all", "dynamer", "linear", "retinamnist", "fewshot", "x"])),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(YAML_KEYS, inner, max_size=3)), max_leaves=8)


@FUZZ
@given(st.one_of(st.text(max_size=120), st.dictionaries(YAML_KEYS, YAML_VALUES, max_size=5).map(
    lambda d: __import__("yaml").safe_dump(d))))
def test_grid_yaml(tmp_path_factory, text):
    from medvtab.bench.grid import expand_grid, load_grid_file

    path = fresh(tmp_path_factory, "grid") / "grid.yaml"
    path.write_text(text, encoding="utf-8", errors="replace")
    outcome("grid yaml", lambda: expand_grid(load_grid_file(path)))


@st.composite
def alias_bombs(draw):
    """(text, values once expanded): ``levels`` anchors, each a list of ``width`` aliases of the one before, under
    keys of one mapping; sometimes a recursive alias (infinite)."""
    levels, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    lines, size = ["a0: &a0 [x, y]"], 3
    total = 1 + 1 + size  # the mapping, then each key and its expanded value
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
        size = 1 + width * size
        total += 1 + size
    if draw(st.booleans()):
        lines.append("r: &r [1, *r]")
        total = float("inf")
    return "\n".join(lines) + "\n", total


@FUZZ
@given(alias_bombs())
@example(("a0: &a0 [x, y]\n" + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)),
          float("inf")))  # the billion laughs of the issue: nine levels of nine aliases
def test_yaml_alias_bombs(tmp_path_factory, bomb):
    """Every YAML a user writes (bench grids, vqa pipeline configs) is read by read_yaml: a document whose aliases
    expand past MAX_NODES values is refused in one line, fast, before anything is built."""
    import time

    from medvtab.bench.grid import load_grid_file
    from medvtab.yaml_files import MAX_NODES

    text, size = bomb
    path = fresh(tmp_path_factory, "yaml") / "grid.yaml"
    path.write_text(text)
    start = time.perf_counter()
    outcome("yaml alias bomb", lambda: load_grid_file(path))
    assert time.perf_counter() - start < 5
    refused = False
    try:
        load_grid_file(path)
    except MedvtabError as err:
        refused = "aliases expand to more than" in str(err)
    assert refused == (size > MAX_NODES), (size, text)


@FUZZ
@given(st.lists(st.integers(0, 10**10), min_size=1, max_size=4), st.sampled_from(["train_images", "train_labels"]),
       st.sampled_from(["|u1", "<i8", "<f4"]))
@example([10**9, 28, 28], "train_images", "|u1")  # the 730 GiB header
def test_npz_with_huge_declared_shapes(tmp_path_factory, shape, key, dtype):
    """A valid .npz whose one array's header declares ``shape`` over a few bytes of data: refused or read, fast,
    never an allocation of what the header declares."""
    import time

    from medvtab.data.loading import read_npz

    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
        dtype, ", ".join(map(str, shape)) + ("," if len(shape) == 1 else ""))
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    member = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 64
    path = fresh(tmp_path_factory, "npzshape") / "task.npz"
    other = "train_labels" if key == "train_images" else "train_images"
    buf = io.BytesIO()
    np.save(buf, np.zeros((2,) + ((28, 28) if other == "train_images" else ()), np.uint8 if other ==
                          "train_images" else np.int64))
    path.write_bytes(_zip_bytes({f"{key}.npy": member, f"{other}.npy": buf.getvalue()}))
    start = time.perf_counter()
    outcome("npz huge declared shape", lambda: read_npz(path))
    assert time.perf_counter() - start < 5


@FUZZ
@given(st.integers(1, 60000), st.integers(1, 60000), st.sampled_from([0, 2]))
@example(30000, 30000, 0)
def test_image_bombs(tmp_path_factory, width, height, colour):
    """A PNG header declaring ``width x height`` pixels over a few compressed rows: decoded when small, refused
    when huge, always fast and always in one line."""
    import struct
    import time
    import zlib

    from medvtab.data.images import read_image

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = b"\0" * (1 + width * (3 if colour == 2 else 1))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(row * min(height, 4))) + chunk(b"IEND", b""))
    path = fresh(tmp_path_factory, "bomb") / "scan.png"
    path.write_bytes(png)
    start = time.perf_counter()
    outcome("image bomb", lambda: read_image(path, 28))
    assert time.perf_counter() - start < 10


@FUZZ
@given(st.sampled_from(["int32", "int64", "uint8", "bool", "float16", "bfloat16", "float32"]),
       st.sampled_from(["none", "nan", "inf"]))
def test_checkpoint_dtypes_and_values(tmp_path_factory, dtype, poison):
    """The bundled expert's weights re-saved in another dtype, with a NaN or an infinity planted: loaded when
    floating and finite, refused in one line naming a key otherwise."""
    import torch
    from safetensors.torch import load_file, save_file

    from medvtab.backbones import load_backbone, tiny

    weights = load_file(str(tiny.bundled_weights("tiny-general")))
    weights = {k: v.to(getattr(torch, dtype)) for k, v in weights.items()}
    key = sorted(weights)[len(weights) // 2]
    if poison != "none" and weights[key].is_floating_point():
        weights[key].view(-1)[0] = float(poison)
    path = fresh(tmp_path_factory, "dtype") / "w.safetensors"
    save_file(weights, str(path))
    bad = not weights[key].is_floating_point() or poison != "none"
    try:
        outcome("checkpoint dtype", lambda: load_backbone(f"tiny-general@{path}"))
        load_backbone(f"tiny-general@{path}")
        refused = False
    except MedvtabError as err:
        refused = "key '" in str(err)
    assert refused == bad, (dtype, poison)
