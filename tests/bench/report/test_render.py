"""Rendering: every string from data (task path, class names, suite, method, run ids) is escaped in the HTML
page and shown literally in the markdown."""
from __future__ import annotations

import re

import numpy as np
import pytest

from medvtab.bench.report.write import write_report
from medvtab.bench.store import RunSpec, write_grid

XSS = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory, small_task, train_bench_run):
    base = tmp_path_factory.mktemp("hostile")
    task_dir = base / "<script>alert(1)<"
    task_dir.mkdir()
    task = task_dir / "script>.npz"  # the path reads .../<script>alert(1)</script>.npz
    with np.load(small_task) as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez(task, **arrays, class_names=np.array([XSS, "b&b \"quoted\""]))
    root = base / "store"
    specs = [RunSpec(task=str(task), method="dynamer"), RunSpec(task=str(task), method="linear"),
             RunSpec(task=str(task), method=XSS)]
    write_grid(root, XSS, specs, command=f"medvtab bench {XSS}")
    for spec in specs[:2]:
        train_bench_run(root, spec)
    return root, task


def test_html_escapes_every_string_from_data(hostile_store):
    root, task = hostile_store
    assert XSS in str(task)
    report = write_report(root)
    page = report.html_path.read_text()
    md = report.md_path.read_text()
    assert "<script" not in page.lower()
    assert "<script" not in re.sub(r"`[^`]*`", "", md).lower()  # markdown code spans show their text literally
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert page.count(escaped) >= 5  # title, suite, task path, class name, method name, run ids
    assert escaped + ", b&amp;b &quot;quoted&quot;" in page  # the class names (tasks table)
    assert "class &#x27;&lt;script&gt;" in page or "class &#x27;b&amp;b" in page  # attention captions
    assert f"<dd>{escaped}</dd>" in page  # the suite
    assert "attention" in report.figures()
    assert report.table("missing").rows[0][2].text == XSS  # the never-run method, listed (escaped in HTML)
