"""Fixtures for the bench tests: a real tiny results store, written once per session through the real path
(``write_grid`` + ``train_run`` with the run's spec recorded), and the report built from it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medvtab.bench.report.write import write_report
from medvtab.bench.store import RunSpec, run_dir, write_grid
from medvtab.engine.loop import TrainConfig
from medvtab.engine.run import train_run

TASKS = ("retinamnist", "breastmnist")  # colour and ultrasound: two of the papers' modality tables
MAIN_METHODS = ("linear", "partial", "dynamer")
SEEDS = (0, 1)


def bench_specs(small: str) -> tuple[list[RunSpec], list[RunSpec]]:
    """(the specs that run, the specs left unfinished on purpose): every group of `medvtab bench`, tiny.
    ``small``: a small task file (64 train images) for the groups that need many runs of one task."""
    tiny = dict(train_size=64)
    # main: both seeds on breastmnist, seed 0 only on retinamnist (its 520 val + test images cost the most)
    run = [RunSpec(task=t, method=m, seed=s, **tiny) for t in TASKS for m in MAIN_METHODS for s in SEEDS
           if t == "breastmnist" or s == 0]
    run += [RunSpec(group="fewshot", task=small, method=m, protocol="fewshot", train_fraction=f)
            for m in ("linear", "dynamer") for f in (0.25, 0.5)]
    run += [RunSpec(group="patient-ood", task="kermany-cxr", method=m, protocol="patient-ood", seen=40, unseen=20,
                    **tiny) for m in ("linear", "dynamer")]
    run += [RunSpec(group="ablation-gates", task=small, method="dynamer", options={"gates": g})
            for g in ("none", "both")]
    run += [RunSpec(group="ablation-gate-dim", task=small, method="dynamer", options={"gate_dim": "1"})]
    run += [RunSpec(group="ablation-gated-layers", task=small, method="dynamer", options={"gated_layers": "last:1"})]
    run += [RunSpec(group="ablation-adapter-layers", task=small, method="dynamer", options={"layers": "last:1"})]
    run += [RunSpec(group="ablation-keep-ratio", task=small, method="dynamer",
                    options={"keep_ratio": ratio, "skip_mode": mode})
            for ratio, mode in ((1.0, "adapter"), (1.0, "later-blocks"), (0.5, "later-blocks"))]
    missing = [RunSpec(task="breastmnist", method="lora", seed=0, **tiny),
               RunSpec(group="ablation-gates", task=small, method="dynamer", options={"gates": "general"})]
    return run, missing


def train_spec(root: Path, spec: RunSpec) -> dict:
    cfg = TrainConfig(epochs=1, batch_size=32, seed=spec.seed, **spec.train)
    return train_run(spec.task, spec.method, spec.general, spec.medical, run_dir(root, spec), cfg, spec.options,
                     spec.train_size, on_note=lambda message: None, protocol=spec.protocol,
                     train_fraction=spec.train_fraction, shots=spec.shots, seen=spec.seen, unseen=spec.unseen,
                     record={"bench": spec.model_dump()})


@pytest.fixture(scope="session")
def train_bench_run():
    """``train(root, spec)``: one run of a grid, as `medvtab bench` would write it (tiny budget)."""
    return train_spec


@pytest.fixture(scope="session")
def bench_store(tmp_path_factory, small_task) -> Path:
    """A bench directory with every report group, two tasks, two seeds on one, and two runs never finished."""
    root = tmp_path_factory.mktemp("bench") / "store"
    run, missing = bench_specs(str(small_task))
    write_grid(root, "test", run + missing, command="pytest tests/bench (the bench_store fixture)")
    trained = set()
    for spec in run:  # specs equal but for their group are one run (e.g. the ablations' default configuration)
        if spec.run_id() not in trained:
            trained.add(spec.run_id())
            train_spec(root, spec)
    return root


@pytest.fixture(scope="session")
def bench_report(bench_store, tmp_path_factory):
    """The report of ``bench_store``, written into a copy (so tests that write to the store stay independent)."""
    root = tmp_path_factory.mktemp("report") / "store"
    shutil.copytree(bench_store, root)
    return write_report(root)
