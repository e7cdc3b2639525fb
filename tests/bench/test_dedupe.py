"""A grid's ``dedupe: true``: its own run ids (the ids of every other run unchanged), its own tuning studies, the
runs drop the leaked evaluation images, and the report's task table shows how many per split."""
from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from medvtab.bench.grid import expand_grid, parse_grid
from medvtab.bench.report.write import write_report
from medvtab.bench.runner import run_grid
from medvtab.bench.store import RunSpec
from medvtab.bench.tune import tuning_key
from medvtab.data.loading import bundled_path


def quiet() -> Console:
    return Console(file=io.StringIO())


def test_dedupe_off_keeps_every_run_id_and_on_makes_new_ones():
    # ids written by medvtab before the field existed: a store made then is still this grid's store
    assert RunSpec(task="breastmnist", method="linear").run_id() == "breastmnist-linear-s0-1eefdebe16bd"
    assert RunSpec(task="breastmnist", method="dynamer", seed=2, train={"epochs": 2}).run_id() == \
        "breastmnist-dynamer-s2-f4c72230e6ab"
    plain = RunSpec(task="breastmnist", method="linear")
    deduped = RunSpec(task="breastmnist", method="linear", dedupe=True)
    assert deduped.run_id() != plain.run_id()
    assert tuning_key(deduped, {}) != tuning_key(plain, {})


def test_grid_field_is_inherited_and_overridden_per_group():
    grid = parse_grid({"tasks": ["breastmnist"], "methods": ["linear"], "dedupe": True,
                       "groups": {"main": {}, "fewshot": {"dedupe": False, "protocols": [
                           {"name": "fewshot", "train_fraction": 0.5}]}}})
    assert [(s.group, s.dedupe) for s in expand_grid(grid)] == [("main", True), ("fewshot", False)]


@pytest.fixture(scope="module")
def leaky_npz(tmp_path_factory):
    """Real BreastMNIST images; two training images copied into validation and one into test."""
    with np.load(bundled_path("breastmnist")) as z:
        arrays = {f"{s}_{k}": z[f"{s}_{k}"][:n] for s, n in (("train", 40), ("val", 12), ("test", 12))
                  for k in ("images", "labels")}
    for split, slot, source in (("val", 0, 0), ("val", 1, 1), ("test", 0, 2)):
        arrays[f"{split}_images"][slot] = arrays["train_images"][source]
        arrays[f"{split}_labels"][slot] = arrays["train_labels"][source]
    path = tmp_path_factory.mktemp("leaky") / "leaky.npz"
    np.savez(path, **arrays)
    return path


def test_a_deduplicated_grid_runs_and_the_report_counts_what_was_dropped(leaky_npz, tmp_path):
    root = tmp_path / "store"
    base = {"name": "t", "tasks": [str(leaky_npz)], "methods": ["linear"], "train": {"epochs": 1, "batch_size": 16}}
    failed = run_grid(root / "plain", expand_grid(parse_grid(base)), suite="t", console=quiet())
    assert len(failed.failed) == 1  # the data check stops the leaky run; the failure names the remedy
    assert "--dedupe" in next(iter((root / "plain" / "failures").glob("*.json"))).read_text()
    specs = expand_grid(parse_grid({**base, "dedupe": True}))
    summary = run_grid(root / "dedupe", specs, suite="t", console=quiet())
    assert len(summary.finished) == 1 and not summary.failed
    report = write_report(root / "dedupe")
    md = report.md_path.read_text()
    assert "Evaluation images dropped (dedupe)" in md and "val 2, test 1" in md
