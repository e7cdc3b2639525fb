"""``medvtab data list / info / check`` as a user runs them: real subprocesses of ``python -m medvtab.cli``.

These commands import no torch, so each process starts in well under a second.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DATA = Path(os.environ.get("MEDVTAB_DATA", "/work/shared/data"))
ENV = {**os.environ, "COLUMNS": "80", "OMP_NUM_THREADS": "1"}
TIMEOUT = 120


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medvtab.cli", "data", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=TIMEOUT)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def real(rel: str) -> Path:
    path = DATA / rel
    if not path.is_file():
        pytest.skip(f"real data file missing: {path}")
    return path


def test_list_json_has_every_task():
    from medvtab.data.catalogue import TASKS, list_tasks

    proc = run("list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 52 == len(TASKS)
    med = {r["name"] for r in rows if r["benchmark"] == "med-vtab"}
    assert len(med) == 23 and med == {t.name for t in list_tasks("med-vtab")}
    assert all({"name", "modality", "source_group", "num_classes", "download"} <= set(r) for r in rows)
    filtered = json.loads(run("list", "--json", "--benchmark", "med-vtab", "--modality", "x-ray").stdout)
    assert len(filtered) == 7 and {r["modality"] for r in filtered} == {"x-ray"}


def test_list_table_and_bad_filter():
    proc = run("list", "--benchmark", "bundled")
    assert proc.returncode == 0 and "5 tasks" in proc.stdout and "pneumoniamnist" in proc.stdout
    proc = run("list", "--benchmark", "nope")
    assert proc.returncode == 2 and one_line(proc.stderr).startswith("error: unknown benchmark 'nope'")


def test_info():
    proc = run("info", "pneumoniamnist")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["name"] == "pneumoniamnist" and info["num_classes"] == 2 and info["source_group"] == "kermany2018"
    proc = run("info", "no-such-task")
    assert proc.returncode == 2 and proc.stdout == ""
    assert one_line(proc.stderr).startswith("error: unknown task 'no-such-task'")


def test_check_the_exact_bad_case_exits_non_zero(tmp_path):
    y = np.zeros(20, dtype=np.int64)
    y[0], y[1] = 9, 1
    np.savez(tmp_path / "bad.npz", train_images=np.zeros((20, 28, 28), np.uint8), train_labels=y,
             test_images=np.zeros((20, 28, 28), np.uint8), test_labels=y % 2)
    proc = run("check", tmp_path / "bad.npz")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert one_line(proc.stderr).startswith("data check bad: FAILED")
    assert "FAIL  empty classes" in proc.stdout and "2..8" in proc.stdout
    assert "FAIL  duplicates across splits" in proc.stdout


def test_check_finds_every_seeded_defect(tmp_path):
    rng = np.random.default_rng(0)
    train_x, test_x = rng.integers(0, 256, (30, 8, 8), np.uint8), rng.integers(0, 256, (6, 8, 8), np.uint8)
    test_x[3] = train_x[5]
    train_p = np.array([f"p{i}" for i in range(30)], dtype="U16")
    train_p[7] = "p-shared"
    np.savez(tmp_path / "defects.npz", train_images=train_x, train_labels=np.array([0] * 12 + [1] * 12 + [9] * 6),
             test_images=test_x, test_labels=np.array([0, 0, 1, 1, 9, 9]), train_patient_ids=train_p,
             test_patient_ids=np.array(["t0", "p-shared", "t2", "t3", "t4", "t5"]))
    proc = run("check", tmp_path / "defects.npz", "--json")
    assert proc.returncode == 1 and "FAILED" in one_line(proc.stderr)
    report = json.loads(proc.stdout)
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status["empty classes"] == status["duplicates across splits"] == status["patients across splits"] == "fail"
    assert report["ok"] is False and len(report["errors"]) == 3


def test_check_names_a_truncated_png(tmp_path):
    rng = np.random.default_rng(1)
    for c in ("normal", "pneumonia"):
        (tmp_path / "xray" / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (16, 16), np.uint8)).save(tmp_path / "xray" / c / f"{i}.png")
    png = tmp_path / "xray" / "pneumonia" / "7.png"
    png.write_bytes(png.read_bytes()[:40])
    proc = run("check", tmp_path / "xray", "--image-size", "16")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL  images readable" in proc.stdout and "pneumonia/7.png" in proc.stdout
    assert "images readable" in one_line(proc.stderr)


def test_check_passes_on_real_breastmnist():
    proc = run("check", real("medmnist/breastmnist_28.npz"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert one_line(proc.stderr).startswith("data check breastmnist_28: passed")
    assert "WARN  duplicates across splits (source's own split)" in proc.stdout  # shown, never hidden


def test_check_on_a_missing_file_is_a_usage_error(tmp_path):
    proc = run("check", tmp_path / "missing.npz")
    assert proc.returncode == 2 and one_line(proc.stderr).startswith("error: ")
