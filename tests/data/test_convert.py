"""``medvtab data prepare``: raw replicas of each layout, built from the bundled real PneumoniaMNIST images,
converted into prepared directories and loaded (memory-mapped) through ``load_task``."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvtab.data import manifest
from medvtab.data.convert import prepare
from medvtab.data.loading import bundled_path, load_task
from medvtab.data.taskdata import ImageRows
from medvtab.errors import MedvtabError

SIZE = 28  # the bundled images' size: no resizing, so pixel values can be checked exactly
CLASSES = ("normal", "pneumonia")


@pytest.fixture(scope="module")
def real():
    """(images (N, 28, 28) uint8, labels (N,)): 40 real images, 20 per class, in class order."""
    with np.load(bundled_path("pneumoniamnist")) as npz:
        images, labels = npz["train_images"], npz["train_labels"].reshape(-1)
    take = np.concatenate([np.flatnonzero(labels == c)[:20] for c in (0, 1)])
    return images[take], labels[take].astype(np.int64)


def no_leftovers(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def read_manifest(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def write_folder(root: Path, images, labels, split_of=None) -> None:
    for i, (im, y) in enumerate(zip(images, labels)):
        d = root / (split_of(i) if split_of else "") / CLASSES[y]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / f"img{i:03d}.png")


# ---------------------------------------------------------------- imagefolder

def test_imagefolder_prepares_loads_memmapped_and_keeps_pixels(tmp_path, real):
    images, labels = real
    write_folder(tmp_path / "raw", images, labels)
    out = tmp_path / "prep"
    meta = prepare("my-cxr", tmp_path / "raw", out, layout="imagefolder", image_size=SIZE)
    assert sorted(p.name for p in out.iterdir()) == ["images_28.npy", "manifest.csv", "task.json"]
    task = json.loads((out / "task.json").read_text())
    assert task == meta
    assert (task["name"], task["num_classes"], task["class_names"]) == ("my-cxr", 2, list(CLASSES))
    assert (task["layout"], task["image_size"], task["channels"], task["registry"]) == ("imagefolder", 28, 1, None)
    rows = read_manifest(out)
    assert list(rows[0]) == ["index", "source_path", "label", "patient_id", "study_id", "split"]
    assert [r["index"] for r in rows] == [str(i) for i in range(40)]
    assert all(r["split"] == "" and r["patient_id"] == "" for r in rows)
    stored = np.load(out / "images_28.npy")
    for r, im in zip(rows, stored):  # every row's pixels are its source file's
        src = np.asarray(Image.open(tmp_path / "raw" / r["source_path"]))
        assert np.array_equal(im[..., 0], src)
        assert CLASSES[int(r["label"])] == Path(r["source_path"]).parent.name

    name, parts = manifest.load_prepared(out)
    assert name == "my-cxr" and isinstance(parts["pool"].images, np.memmap)
    data = load_task(str(out))
    assert data.name == "my-cxr" and data.num_classes == 2 and data.class_names == list(CLASSES)
    assert sum(data.sizes().values()) == 40 and min(data.sizes().values()) > 0
    assert any("pooled layout" in n for n in data.notes)
    assert np.array_equal(np.sort(np.concatenate([s.index for s in data.splits().values()])), np.arange(40))
    for split in data.splits().values():  # pool positions index the stored array
        assert np.array_equal(split.images, stored[split.index])
        assert np.array_equal(split.labels, np.array([int(rows[i]["label"]) for i in split.index]))
        # carved without copying: rows of the map, read one at a time when asked for
        assert isinstance(split.images, ImageRows) and split.images.base.filename is not None
        assert split.images.shape == (len(split), 28, 28, 1)
        assert all(np.array_equal(a, b) for a, b in zip(split.images, stored[split.index]))
    fewer = load_task(str(out), train_size=8)  # a subset of a subset stays on disk too
    assert isinstance(fewer.train.images, ImageRows) and len(fewer.train) == 8
    assert np.array_equal(fewer.train.images[2:5], stored[fewer.train.index[2:5]])


def test_imagefolder_split_folders_give_the_splits_as_memmap_views(tmp_path, real):
    images, labels = real
    write_folder(tmp_path / "raw", images, labels, split_of=lambda i: ("train", "train", "val", "test")[i % 4])
    out = tmp_path / "prep"
    prepare("split-cxr", tmp_path / "raw", out, layout="imagefolder", image_size=SIZE)
    assert [r["split"] for r in read_manifest(out)] == ["train"] * 20 + ["val"] * 10 + ["test"] * 10
    data = load_task(str(out))
    assert data.sizes() == {"train": 20, "val": 10, "test": 10} and not data.notes
    assert isinstance(data.train.images, np.memmap) or isinstance(data.train.images.base, np.memmap)
    assert np.array_equal(data.test.index, np.arange(30, 40))


def test_unreadable_image_is_named_and_nothing_is_written(tmp_path, real):
    images, labels = real
    write_folder(tmp_path / "raw", images[:6], labels[:6])
    (tmp_path / "raw" / "normal" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "prep"
    with pytest.raises(MedvtabError, match=r"1 unreadable image file\(s\): normal/broken.png"):
        prepare("x", tmp_path / "raw", out, layout="imagefolder", image_size=SIZE)
    no_leftovers(out)


def test_unregistered_task_needs_a_layout_and_registered_one_uses_its_raw_layout(tmp_path, real):
    images, labels = real
    write_folder(tmp_path / "raw", images, labels)
    with pytest.raises(MedvtabError, match="not registered: pass --layout"):
        prepare("no-such-task-xyz", tmp_path / "raw", tmp_path / "a", image_size=SIZE)
    no_leftovers(tmp_path / "a")
    meta = prepare("LHNCBC_Malaria", tmp_path / "raw", tmp_path / "b", image_size=SIZE)  # registered: imagefolder
    assert meta["layout"] == "imagefolder" and meta["registry"]["name"] == "lhncbc-malaria"
    assert meta["name"] == "lhncbc-malaria" and meta["registry"]["raw_layout"] == "imagefolder"


# ---------------------------------------------------------------- csv

def write_csv(path: Path, header, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_csv_with_patients_pools_patient_disjoint(tmp_path, real):
    images, labels = real
    raw = tmp_path / "raw"
    (raw / "imgs").mkdir(parents=True)
    rows = []
    for i, (im, y) in enumerate(zip(images, labels)):
        Image.fromarray(im).save(raw / "imgs" / f"{i}.png")
        rows.append([f"imgs/{i}", CLASSES[y], f"P{i // 2}"])  # no suffix: found as .png
    write_csv(raw / "labels.csv", ["image", "diagnosis", "patient_id"], rows)
    out = tmp_path / "prep"
    meta = prepare("csv-cxr", raw, out, layout="csv", image_size=SIZE, label_column="diagnosis")
    assert meta["policy"]["patient_column"] == "patient_id" and meta["patients"] == 20
    m = read_manifest(out)
    assert [r["source_path"] for r in m[:2]] == ["imgs/0.png", "imgs/1.png"]
    assert [r["patient_id"] for r in m[:3]] == ["P0", "P0", "P1"]
    data = load_task(str(out))
    assert data.class_names == list(CLASSES)
    assert np.array_equal(data.train.images[..., 0], images[data.train.index])
    seen = [set(s.patient_ids.tolist()) for s in (data.train, data.val, data.test)]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert "patient-disjoint" in data.notes[0]


def test_csv_split_column_and_missing_image(tmp_path, real):
    images, labels = real
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = []
    for i, (im, y) in enumerate(zip(images, labels)):
        Image.fromarray(im).save(raw / f"{i}.png")
        rows.append([f"{i}.png", int(y), ("test", "train", "valid")[i % 3]])
    write_csv(raw / "labels.csv", ["path", "label", "split"], rows)
    prepare("c", raw, tmp_path / "ok", layout="csv", image_size=SIZE)
    data = load_task(str(tmp_path / "ok"))
    assert data.sizes() == {"train": 13, "val": 13, "test": 14}
    assert data.class_names == ["0", "1"]
    write_csv(raw / "labels.csv", ["path", "label"], [["0.png", 0], ["missing.png", 1]])
    with pytest.raises(MedvtabError, match="image 'missing.png' not found"):
        prepare("c", raw, tmp_path / "bad", layout="csv", image_size=SIZE)
    no_leftovers(tmp_path / "bad")


def test_one_hot_csv_columns_are_single_label(tmp_path, real):
    images, _ = real
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(4):
        Image.fromarray(images[i]).save(raw / f"{i}.png")
    out = tmp_path / "prep"
    # one-hot columns with exactly one 1 per row are single-label: read as such
    write_csv(raw / "labels.csv", ["image", "MEL", "NV"], [["0.png", 1, 0], ["1.png", 0, 1], ["2.png", 0, 1],
                                                           ["3.png", 1, 0]])
    meta = prepare("oh", raw, out, layout="csv", image_size=SIZE)
    assert meta["class_names"] == ["MEL", "NV"]
    assert [r["label"] for r in read_manifest(out)] == ["0", "1", "1", "0"]


# ---------------------------------------------------------------- npz

def test_npz_pooled_keeps_patient_ids_and_resizes(tmp_path, real):
    images, labels = real
    pids = np.array([f"p{i // 4}" for i in range(len(labels))])
    src = tmp_path / "pool.npz"
    np.savez(src, images=images, labels=labels, patient_ids=pids)
    out = tmp_path / "prep"
    meta = prepare("pool-cxr", src, out, layout="npz", image_size=32)
    assert meta["image_size"] == 32 and (out / "images_32.npy").is_file()
    assert np.load(out / "images_32.npy", mmap_mode="r").shape == (40, 32, 32, 1)
    m = read_manifest(out)
    assert m[3]["source_path"] == "pool.npz:images[3]" and m[3]["patient_id"] == "p0"
    data = load_task(str(out))
    assert data.patient_counts() is not None and sum(data.patient_counts().values()) == 10


def test_npz_medmnist_splits_are_kept(tmp_path, real):
    images, labels = real
    src = tmp_path / "m.npz"
    np.savez(src, train_images=images[::2], train_labels=labels[::2, None], test_images=images[1::2],
             test_labels=labels[1::2, None])
    prepare("m", src, tmp_path / "prep", layout="npz", image_size=SIZE)
    data = load_task(str(tmp_path / "prep"))
    assert len(data.test) == 20 and len(data.train) + len(data.val) == 20
    assert np.array_equal(data.test.images[..., 0], images[1::2])


# ---------------------------------------------------------------- DICOM

def write_dicom(path: Path, pixels: np.ndarray, *, modality: str, photometric: str = "MONOCHROME2",
                slope: float = 1.0, intercept: float = 0.0, patient: str = "P1", study: str = "1.2.3",
                window: tuple[float, float] | None = None, voi_function: str | None = None) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.StudyInstanceUID = modality, patient, study
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
    ds.PixelData = pixels.astype("<u2").tobytes()
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_dicom_windowing_inversion_and_patient_ids(tmp_path, real):
    images, labels = real
    raw = tmp_path / "raw"
    for i in range(8):  # CT: stored = 3 * pixel + 500; HU = 0.5 * stored - 300 = 1.5 * pixel - 50
        write_dicom(raw / CLASSES[labels[i * 5]] / f"s{i}" / f"ct{i}.dcm", images[i * 5].astype(np.int64) * 3 + 500,
                    modality="CT", slope=0.5, intercept=-300, patient=f"CT{i % 3}", study=f"1.2.{i}")
    write_dicom(raw / "normal" / "cr.dcm", images[1], modality="CR", photometric="MONOCHROME1", patient="CR9")
    write_dicom(raw / "pneumonia" / "cr.dcm", images[30], modality="CR", patient="CR8")
    out = tmp_path / "prep"
    meta = prepare("ct-cxr", raw, out, layout="dicom", image_size=SIZE, window=(40, 400))
    assert meta["policy"]["ct_window"] == {"center": 40, "width": 400, "over": "the files' own"}
    rows, stored = read_manifest(out), np.load(out / "images_28.npy")
    assert len(rows) == 10
    by_path = {r["source_path"]: (r, im[..., 0]) for r, im in zip(rows, stored)}
    for i in range(8):
        r, im = by_path[f"{CLASSES[labels[i * 5]]}/s{i}/ct{i}.dcm"]
        hu = images[i * 5].astype(np.float64) * 1.5 - 50
        expected = np.round((np.clip(hu, -160, 240) + 160) * (255 / 400))
        assert np.abs(im.astype(np.int64) - expected).max() <= 1  # float rounding at .5 only
        assert np.all(im[hu >= 240] == 255) and np.all(im[hu <= -160] == 0)  # the window clips
        if (hu > 240).any():  # not a min-max: the brightest in-window pixel is below 255
            assert im[hu < 230].max(initial=0) < 255
        assert (r["patient_id"], r["study_id"]) == (f"CT{i % 3}", f"1.2.{i}")
    r, im = by_path["normal/cr.dcm"]  # MONOCHROME1: min-max, then inverted
    src = images[1].astype(np.float64)
    minmax = np.round((src - src.min()) * 255 / (src.max() - src.min())).astype(np.uint8)
    assert np.array_equal(im, 255 - minmax) and r["patient_id"] == "CR9"
    r, im = by_path["pneumonia/cr.dcm"]
    src = images[30].astype(np.float64)
    assert np.array_equal(im, np.round((src - src.min()) * 255 / (src.max() - src.min())).astype(np.uint8))
    data = load_task(str(out))
    assert data.num_classes == 2 and data.patient_counts() is not None


def test_dicom_files_own_window_through_pydicoms_voi_lut(tmp_path, real):
    """A file's own WindowCenter / WindowWidth decides its 8-bit image (pydicom's apply_voi_lut, output range
    onto 0..255), CT included; an explicit --window still wins for CT. Checked against pydicom itself and
    against the DICOM standard's formulas (PS3.3 C.11.2.1.2)."""
    from pydicom import dcmread
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    from medvtab.data.dicom_nifti import read_dicom

    images, _ = real
    stored = images[5].astype(np.int64) * 200 + 1000  # 1000..52000 of a 16-bit detector
    cases = {  # name: (modality, window, function, slope, intercept)
        "cr_linear": ("CR", (20000, 30000), None, 1.0, 0.0),
        "cr_exact": ("CR", (25000, 20000), "LINEAR_EXACT", 1.0, 0.0),
        "dx_sigmoid": ("DX", (26000, 25000), "SIGMOID", 1.0, 0.0),
        "ct_lung": ("CT", (-600, 1500), None, 0.05, -1024.0),  # HU = 0.05 * stored - 1024: -974..1576
    }
    for name, (modality, (c, w), function, slope, intercept) in cases.items():
        path = tmp_path / f"{name}.dcm"
        write_dicom(path, stored, modality=modality, slope=slope, intercept=intercept, window=(c, w),
                    voi_function=function)
        out, _, _ = read_dicom(path)
        ds = dcmread(path)
        x = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
        y_min, y_max = intercept, (2 ** 16 - 1) * slope + intercept  # pydicom's output range, 16 bits unsigned
        pydicom_8bit = np.round((apply_voi_lut(x, ds).astype(np.float64) - y_min) * 255 / (y_max - y_min))
        assert np.abs(out.astype(int) - pydicom_8bit).max() <= 1, name
        if function == "SIGMOID":
            standard = 1 / (1 + np.exp(-4 * (x - c) / w))
        elif function == "LINEAR_EXACT":
            standard = np.clip((x - (c - w / 2)) / w, 0, 1)
        else:
            standard = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
        assert np.abs(out - np.round(standard * 255)).max() <= 1, name
        assert 0 < out.mean() < 255 and len(np.unique(out)) > 20, name  # neither saturated nor flattened
    hu = stored * 0.05 - 1024
    expected = np.round((np.clip(hu, -160, 240) + 160) * 255 / 400)
    soft_tissue, _, _ = read_dicom(tmp_path / "ct_lung.dcm", window=(40, 400))  # --window over the file's own
    assert np.abs(soft_tissue - expected).max() <= 1
    write_dicom(tmp_path / "ct_plain.dcm", stored, modality="CT", slope=0.05, intercept=-1024)  # no window
    assert np.abs(read_dicom(tmp_path / "ct_plain.dcm")[0] - expected).max() <= 1


def test_unreadable_dicom_is_named(tmp_path, real):
    images, labels = real
    raw = tmp_path / "raw"
    write_dicom(raw / "normal" / "a.dcm", images[0], modality="CT")
    write_dicom(raw / "pneumonia" / "b.dcm", images[25], modality="CT")
    (raw / "pneumonia" / "corrupt.dcm").write_bytes(b"\x00" * 50)
    out = tmp_path / "prep"
    with pytest.raises(MedvtabError, match=r"1 unreadable DICOM file\(s\): pneumonia/corrupt.dcm"):
        prepare("d", raw, out, layout="dicom", image_size=SIZE)
    no_leftovers(out)


# ---------------------------------------------------------------- NIfTI

def test_nifti_middle_slices_and_volume_patient_ids(tmp_path, real):
    import nibabel as nib

    images, labels = real
    raw = tmp_path / "raw"
    volumes = {}
    for v in range(4):  # each volume: 10 real images stacked as axial slices
        slices = images[v * 10:(v + 1) * 10]
        vol = np.stack([np.rot90(s, -1) for s in slices], axis=2).astype(np.int16) * 4 - 100
        (raw / CLASSES[labels[v * 10]]).mkdir(parents=True, exist_ok=True)
        suffix = ".nii.gz" if v % 2 else ".nii"
        nib.save(nib.Nifti1Image(vol, np.eye(4)), raw / CLASSES[labels[v * 10]] / f"vol{v}{suffix}")
        volumes[f"vol{v}"] = slices
    out = tmp_path / "prep"
    meta = prepare("vols", raw, out, layout="nifti", image_size=SIZE, slices=4)
    assert meta["policy"]["slices_per_volume"] == 4
    rows, stored = read_manifest(out), np.load(out / "images_28.npy")
    assert len(rows) == 16
    ids = [r["patient_id"] for r in rows]
    assert sorted(set(ids)) == sorted(volumes) and all(ids.count(v) == 4 for v in volumes)
    assert all(r["study_id"] == r["patient_id"] for r in rows)
    for vid, slices in volumes.items():
        got = stored[[i for i, r in enumerate(rows) if r["patient_id"] == vid]][..., 0]
        whole = slices.astype(np.float64)  # min-max over the whole volume, middle slices 3..6
        expected = np.round((whole - whole.min()) * 255 / (whole.max() - whole.min())).astype(np.uint8)[3:7]
        assert np.array_equal(got, expected)
    data = load_task(str(out))
    seen = [set(s.patient_ids.tolist()) for s in (data.train, data.val, data.test)]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


# ---------------------------------------------------------------- end to end

def test_converted_task_trains_end_to_end(tmp_path, real):
    from medvtab.engine.loop import TrainConfig
    from medvtab.engine.run import train_run

    images, labels = real
    write_folder(tmp_path / "raw", images, labels)
    out = tmp_path / "prep"
    prepare("e2e", tmp_path / "raw", out, layout="imagefolder", image_size=SIZE)
    result = train_run(str(out), "linear", "tiny-general", None, tmp_path / "run", TrainConfig(epochs=1, batch_size=16),
                       on_note=lambda m: None)
    assert 0.0 <= result["accuracy"] <= 1.0
    assert sum(result["split_sizes"].values()) == 40
    assert json.loads((tmp_path / "run" / "config.json").read_text())["task_source"] == str(out)


def test_cli_prepare_and_one_line_error(tmp_path, real):
    images, labels = real
    write_folder(tmp_path / "raw", images[:10], labels[:10])
    write_folder(tmp_path / "raw", images[20:30], labels[20:30])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "medvtab.cli", "data", "prepare"]
    ok = subprocess.run(cmd + ["cli-task", "--src", tmp_path / "raw", "--out", tmp_path / "prep", "--layout",
                               "imagefolder", "--image-size", "16", "--workers", "2"], capture_output=True, text=True, env=env,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "20 images, 2 classes" in ok.stdout and (tmp_path / "prep" / "images_16.npy").is_file()
    assert "prepare cli-task: 20/20 files (100%)" in ok.stderr.splitlines()[-1]  # plain lines: not a terminal
    bad = subprocess.run(cmd + ["cli-task", "--src", tmp_path / "raw", "--out", tmp_path / "p2"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "not registered: pass --layout" in bad.stderr
    no_leftovers(tmp_path / "p2")


def test_mixed_grey_and_colour_become_rgb(tmp_path, real):
    images, labels = real
    write_folder(tmp_path / "raw", images[15:25], labels[15:25])
    colour = np.stack([images[0], images[1], images[2]], axis=-1)
    Image.fromarray(colour).save(tmp_path / "raw" / "normal" / "rgb.png")
    meta = prepare("mix", tmp_path / "raw", tmp_path / "prep", layout="imagefolder", image_size=SIZE)
    stored = np.load(tmp_path / "prep" / "images_28.npy", mmap_mode="r")
    assert meta["channels"] == 3 and stored.shape == (11, 28, 28, 3)
    rows = read_manifest(tmp_path / "prep")
    i = [r["source_path"] for r in rows].index("normal/rgb.png")
    assert np.array_equal(stored[i], colour)
    j = [r["source_path"] for r in rows].index("pneumonia/img005.png")  # images[20], grey, repeated
    assert np.array_equal(stored[j], np.repeat(images[20][..., None], 3, -1))


def test_csv_paths_outside_the_raw_root_need_allow_outside_root(tmp_path, real):
    images, _ = real
    raw = tmp_path / "raw"
    raw.mkdir()
    Image.fromarray(images[0]).save(tmp_path / "outside.png")
    Image.fromarray(images[1]).save(raw / "in.png")
    (raw / "link.png").symlink_to(tmp_path / "outside.png")
    for rel in ("../outside.png", str(tmp_path / "outside.png"), "link.png"):
        write_csv(raw / "labels.csv", ["image", "label"], [["in.png", 0], [rel, 1]])
        with pytest.raises(MedvtabError, match=r"line 3: image .* lies outside the raw root .*--allow-outside-root"):
            prepare("c", raw, tmp_path / "out", layout="csv", image_size=SIZE)
        no_leftovers(tmp_path / "out")
    meta = prepare("c", raw, tmp_path / "out", layout="csv", image_size=SIZE, allow_outside_root=True)
    assert meta["images"] == 2
    assert read_manifest(tmp_path / "out")[1]["source_path"] == str((tmp_path / "outside.png").resolve())


# ---------------------------------------------------------------- at scale: workers, progress, memory

def prepared_bytes(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.mark.parametrize("layout", ["imagefolder", "nifti"])
def test_workers_write_the_same_bytes_and_report_progress(tmp_path, real, monkeypatch, layout):
    """Two worker processes give byte-identical files to one (in process), through the array's reshapes: grey
    widened to RGB when a colour image comes mid-way, a volume with fewer slices than asked cutting the array."""
    import nibabel as nib

    from medvtab.data import decoding

    monkeypatch.setattr(decoding, "CHUNK", 3)  # several chunks in flight on a small set
    monkeypatch.setattr(decoding, "PER_WORKER", 1)
    images, labels = real
    raw = tmp_path / "raw"
    if layout == "imagefolder":
        write_folder(raw, images, labels, split_of=lambda i: ("train", "test", "val")[i % 3])
        Image.fromarray(np.stack([images[0], images[5], images[9]], -1)).save(raw / "train" / "normal" / "rgb.png")
        (raw / "val" / "pneumonia" / "broken.png").write_bytes(b"not a png")
    else:
        for v in range(8):  # volume 3 has 2 slices, the others 5; 3 of them are asked for
            vol = np.stack(list(images[v * 5:v * 5 + (2 if v == 3 else 5)]), axis=2).astype(np.int16)
            (raw / CLASSES[v % 2]).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(vol, np.eye(4)), raw / CLASSES[v % 2] / f"vol{v}.nii.gz")
    if layout == "imagefolder":
        for workers in (1, 2):
            with pytest.raises(MedvtabError, match=r"^1 unreadable image file\(s\): val/pneumonia/broken.png \("):
                prepare("w", raw, tmp_path / f"bad{workers}", layout=layout, image_size=SIZE, workers=workers)
            no_leftovers(tmp_path / f"bad{workers}")
        (raw / "val" / "pneumonia" / "broken.png").unlink()
    seen = {1: [], 2: []}
    for workers in (1, 2):
        prepare("w", raw, tmp_path / f"w{workers}", layout=layout, image_size=SIZE, slices=3, workers=workers,
                on_progress=lambda done, total, w=workers: seen[w].append((done, total)))
    assert prepared_bytes(tmp_path / "w1") == prepared_bytes(tmp_path / "w2")
    stored = np.load(tmp_path / "w1" / "images_28.npy")
    if layout == "imagefolder":
        assert stored.shape == (41, SIZE, SIZE, 3)
        assert np.array_equal(stored[0], np.repeat(images[0][..., None], 3, -1))  # train/normal/img000.png
    else:
        assert stored.shape == (7 * 3 + 2, SIZE, SIZE, 1)
    files = 41 if layout == "imagefolder" else 8
    for calls in seen.values():
        done = [d for d, _ in calls]
        assert done == sorted(done) and calls[-1] == (files, files) and {t for _, t in calls} == {files}
    assert len(seen[2]) < len(seen[1]) == files  # one call per file in process, one per chunk from workers


def test_decoded_images_are_never_all_in_memory(tmp_path, real):
    """The Python heap's peak while preparing 240 images stays far below their decoded size: each image goes into
    the memory-mapped array as it is decoded (a list of decoded images, as before, would hold them all)."""
    import tracemalloc

    images, labels = real
    raw = tmp_path / "raw"
    for i in range(6):
        write_folder(raw / f"copy{i}", images, labels)
    raw = raw / "all"
    for i in range(6):
        for f in (tmp_path / "raw" / f"copy{i}").rglob("*.png"):
            (raw / f.parent.name).mkdir(parents=True, exist_ok=True)
            f.rename(raw / f.parent.name / f"{i}-{f.name}")
    size = 160
    decoded_bytes = 240 * size * size
    tracemalloc.start()
    try:
        prepare("mem", raw, tmp_path / "prep", layout="imagefolder", image_size=size, workers=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.load(tmp_path / "prep" / f"images_{size}.npy", mmap_mode="r").shape == (240, size, size, 1)
    assert peak < decoded_bytes / 4, (peak, decoded_bytes)
