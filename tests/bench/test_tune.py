"""Tuning every (task, method) on validation before a grid's final runs (medvtab.bench.tune), on real bundled data
with tiny budgets: selection never reads the test split, the store records every trial and the chosen values,
the final runs use them, a rerun retrains nothing, an interrupted study is completed, the median pruner stops bad
trials, and an untuned grid's run ids are what they were."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest

import medvtab.engine.run
from medvtab.bench.grid import expand_grid, parse_grid
from medvtab.bench.report.write import write_report
from medvtab.bench.runner import run_grid
from medvtab.bench.store import RunSpec, read_grid, run_dir
from medvtab.bench.suites import build_suite
from medvtab.bench.tune import TUNING_FILE, plan_studies, tune_grid, tuning_key, tuning_of
from medvtab.data.loading import bundled_path
from medvtab.errors import MedvtabError

from .test_runner import Quiet

LRS = [1.0e-4, 1.0e-2]


def grid(task: str = "breastmnist", methods=("linear", "vpt-shallow"), lrs=LRS, epochs: int = 1, **extra):
    g = parse_grid({"name": "t", "tasks": [task], "methods": list(methods), "train_size": 32,
                    "train": {"epochs": epochs, "batch_size": 32},
                    "tune": {"space": {"lr": list(lrs)}, "seed": 0, "pruner": "median"}, **extra})
    return expand_grid(g), tuning_of([g])


def bench(root: Path, specs, tuning):
    return run_grid(root, specs, suite="t", tuning=tuning, console=Quiet())


def trial_scores(record: dict) -> dict:
    return {s["method"]: [(t["values"], t["state"], t["val_scores"]) for t in s["trials"]] for s in record["studies"]}


def test_selection_never_reads_the_test_split(tmp_path):
    """The same grid on BreastMNIST and on a copy whose test labels are permuted: identical trials and choices."""
    tasks = []
    for name, permute in (("a", False), ("b", True)):
        with np.load(bundled_path("breastmnist"), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        if permute:
            before = arrays["test_labels"].copy()
            arrays["test_labels"] = np.random.default_rng(0).permutation(arrays["test_labels"])
            assert (before != arrays["test_labels"]).any()
        path = tmp_path / name / "breastmnist.npz"
        path.parent.mkdir()
        np.savez(path, **arrays)
        tasks.append(path)
    records = []
    for task in tasks:
        root = tmp_path / f"store-{task.parent.name}"
        specs, tuning = grid(str(task))
        resolved = tune_grid(root, specs, tuning)
        records.append(json.loads((root / TUNING_FILE).read_text()))
        assert all(s.train["lr"] in LRS for s in resolved)
        for study in records[-1]["studies"]:
            for t in study["trials"]:
                metrics = json.loads((root / "runs" / t["run_id"] / "metrics.json").read_text())
                assert "accuracy" not in metrics and "auroc" not in metrics  # no test metrics in a trial
                assert not (root / "runs" / t["run_id"] / "adapter.safetensors").exists()
    assert trial_scores(records[0]) == trial_scores(records[1])
    assert [s["chosen"] for s in records[0]["studies"]] == [s["chosen"] for s in records[1]["studies"]]


def test_store_records_trials_budget_and_final_runs_use_the_choice(tmp_path):
    specs, tuning = grid(seeds=2)
    summary = bench(tmp_path, specs, tuning)
    assert not summary.failed
    record = json.loads((tmp_path / TUNING_FILE).read_text())
    assert record["storage"] == f"sqlite:///{tmp_path.resolve() / 'tuning.db'}"
    assert [s["method"] for s in record["studies"]] == ["linear", "vpt-shallow"]
    info, final = read_grid(tmp_path)
    assert info["tune"]["space"] == {"lr": LRS}
    assert len(final) == 4  # 2 methods x 2 seeds, each with its method's chosen lr
    for study in record["studies"]:
        assert study["budget"] == {"trials": 2, "epochs": 1, "steps_per_epoch": 1, "train_images": 32,
                                   "batch_size": 32}
        assert [t["values"] for t in study["trials"]] == [{"lr": lr} for lr in LRS]
        assert all(t["state"] == "COMPLETE" and len(t["val_scores"]) == 1 for t in study["trials"])
        best = max(study["trials"], key=lambda t: t["val_score"])  # max keeps the first of equals: grid order
        assert study["chosen"] == best["values"] and study["best_val_score"] == best["val_score"]
        runs = [s for s in final if s.method == study["method"]]
        assert {s.seed for s in runs} == {0, 1}
        for spec in runs:
            assert spec.train["lr"] == study["chosen"]["lr"]
            config = json.loads((run_dir(tmp_path, spec) / "config.json").read_text())
            assert config["train"]["lr"] == study["chosen"]["lr"]
            assert "accuracy" in json.loads((run_dir(tmp_path, spec) / "metrics.json").read_text())


def test_rerun_retrains_nothing_and_an_interrupted_study_is_completed(tmp_path, monkeypatch):
    specs, tuning = grid(methods=("linear",))
    bench(tmp_path / "clean", specs, tuning)
    first = json.loads((tmp_path / "clean" / TUNING_FILE).read_text())

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run or trial was trained again")

    real = medvtab.engine.run.train_run
    monkeypatch.setattr(medvtab.engine.run, "train_run", must_not_train)
    again = bench(tmp_path / "clean", specs, tuning)
    assert not again.failed and len(again.skipped) == again.runs
    assert json.loads((tmp_path / "clean" / TUNING_FILE).read_text()) == first
    (tmp_path / "clean" / "tuning.db").unlink()  # the studies lost, the trials' run directories kept: replayed
    bench(tmp_path / "clean", specs, tuning)
    assert json.loads((tmp_path / "clean" / TUNING_FILE).read_text()) == first
    monkeypatch.setattr(medvtab.engine.run, "train_run", real)

    # a worker killed during the second trial: the study holds it RUNNING, and it has no run directory
    root = tmp_path / "killed"
    study = next(iter(plan_studies(root, specs, tuning).values()))
    root.mkdir()
    opt = optuna.create_study(study_name=study.name, storage=study.storage, direction="maximize")
    opt.enqueue_trial({"lr": LRS[1]})
    opt.ask({"lr": optuna.distributions.CategoricalDistribution(LRS)})
    bench(root, specs, tuning)
    resumed = json.loads((root / TUNING_FILE).read_text())["studies"][0]
    assert [(t["values"]["lr"], t["state"]) for t in resumed["trials"]] == [
        (LRS[1], "FAIL"), (LRS[0], "COMPLETE"), (LRS[1], "COMPLETE")]
    clean = first["studies"][0]
    assert resumed["chosen"] == clean["chosen"] and resumed["best_val_score"] == clean["best_val_score"]
    done = {t["values"]["lr"]: t["val_scores"] for t in resumed["trials"] if t["state"] == "COMPLETE"}
    assert done == {t["values"]["lr"]: t["val_scores"] for t in clean["trials"]}


def test_median_pruner_stops_a_bad_trial(tmp_path):
    """Two good learning rates first, then one too small to leave its start: pruned after its first epoch."""
    specs, tuning = grid(methods=("linear",), lrs=[1.0e-2, 3.0e-2, 1.0e-6], epochs=2)
    bench(tmp_path, specs, tuning)
    study = json.loads((tmp_path / TUNING_FILE).read_text())["studies"][0]
    states = [(t["values"]["lr"], t["state"], t["pruned_at_epoch"], len(t["val_scores"])) for t in study["trials"]]
    assert states == [(1.0e-2, "COMPLETE", None, 2), (3.0e-2, "COMPLETE", None, 2), (1.0e-6, "PRUNED", 1, 1)]
    assert study["chosen"]["lr"] in (1.0e-2, 3.0e-2)
    pruned = study["trials"][2]["run_id"]
    metrics = json.loads((tmp_path / "runs" / pruned / "metrics.json").read_text())
    assert metrics["pruned_at_epoch"] == 1 and metrics["epochs_run"] == 1


def test_untuned_run_ids_are_unchanged(tmp_path):
    """Run ids computed before tuning existed (a default-valued new field must not change them)."""
    assert RunSpec(task="breastmnist", method="linear").run_id() == "breastmnist-linear-s0-1eefdebe16bd"
    assert RunSpec(task="retinamnist", method="dynamer", seed=2, train_size=256, options={"keep_ratio": 0.5},
                   train={"epochs": 3, "batch_size": 32, "patience": 2}).run_id() == "retinamnist-dynamer-s2-7cd49a02ae49"
    assert RunSpec(task="breastmnist", method="linear", test=False).run_id().startswith("trial-breastmnist-linear-s0-")
    specs, _ = grid(methods=("linear",))
    untuned = expand_grid(parse_grid({"name": "t", "tasks": ["breastmnist"], "methods": ["linear"], "train_size": 32,
                                      "train": {"epochs": 1, "batch_size": 32}}))
    assert [s.run_id() for s in specs] == [s.run_id() for s in untuned]  # `tune:` changes nothing before tuning
    run_grid(tmp_path, untuned, suite="t", console=Quiet())
    assert not (tmp_path / TUNING_FILE).exists() and not (tmp_path / "tuning.db").exists()


def test_mini_suites_share_the_retinamnist_dynamer_study(tmp_path):
    grids = [build_suite("mini"), build_suite("mini-ablations")]
    tuning = tuning_of(grids)
    specs = [s for g in grids for s in expand_grid(g)]
    studies = plan_studies(tmp_path, specs, tuning)
    dynamer = [s for s in specs if s.task == "retinamnist" and s.method == "dynamer"]
    assert {tuning_key(s, tuning.sweeps) for s in dynamer} == {tuning_key(dynamer[0], tuning.sweeps)}
    assert dynamer[0].group == "main"
    alone = plan_studies(tmp_path, expand_grid(grids[1]), tuning_of(grids[1:]))
    name = studies[tuning_key(dynamer[0], tuning.sweeps)].name
    assert [s.name for s in alone.values()] == [name]  # the ablations alone tune the same study
    assert len(studies) == 14 * 3 + 5  # main's cells and patient-ood's; few-shot and ablations share them


def test_report_shows_the_tuning(tmp_path):
    specs, tuning = grid()
    bench(tmp_path, specs, tuning)
    report = write_report(tmp_path, attention=False)
    table = report.table("tuning")
    assert [c.text for c in table.column("Method")] == ["linear", "vpt-shallow"]
    assert "sensitivity" in report.figures() and report.figures()["sensitivity"].path.exists()
    text = report.md_path.read_text()
    assert "Every method: 2 trials of 1 epochs x 1 steps on 32 train images, the same for all" in text
    assert "trial-" not in "".join(p for s in report.sections if s.key == "missing" for p in s.paragraphs)
    shutil.rmtree(tmp_path / "runs")
    (tmp_path / TUNING_FILE).unlink()
    untuned = write_report(tmp_path, attention=False)
    assert [s.paragraphs for s in untuned.sections if s.key == "tuning"] == [
        ["Not tuned: methods ran at their defaults."]]


@pytest.mark.parametrize("space", [{"foo": [1]}, {"lr": []}, {"seed": [0, 1]}])
def test_bad_space_is_a_one_line_error(space):
    with pytest.raises(MedvtabError, match="tune.space"):
        parse_grid({"tasks": ["breastmnist"], "tune": {"space": space}})


def test_cli_dry_run_shows_studies_and_no_tune_skips_them(tmp_path, capsys):
    from .test_grid import cli

    config = tmp_path / "grid.yaml"
    config.write_text("name: t\ntasks: [breastmnist]\nmethods: [linear]\ntrain_size: 32\n"
                      "train: {epochs: 1, batch_size: 32}\ntune: {space: {lr: [1.0e-4, 1.0e-2]}}\n")
    out_dir = tmp_path / "out"
    code, out, err = cli(capsys, "bench", "--config", config, "--out", out_dir, "--dry-run")
    assert code == 0, err
    assert "tuning: 1 studies" in out and "breastmnist linear: 2 trials, 0 finished; to be chosen" in out
    assert not out_dir.exists()
    code, out, err = cli(capsys, "bench", "--config", config, "--out", out_dir)
    assert code == 0, err
    chosen = json.loads((out_dir / TUNING_FILE).read_text())["studies"][0]["chosen"]["lr"]
    code, out, err = cli(capsys, "bench", "--config", config, "--out", out_dir, "--dry-run")
    assert f"2 trials, 2 finished; lr={chosen}" in out and "finished  breastmnist linear s0" in out
    code, out, err = cli(capsys, "bench", "--config", config, "--out", tmp_path / "untuned", "--no-tune")
    assert code == 0, err
    assert not (tmp_path / "untuned" / TUNING_FILE).exists()
    assert read_grid(tmp_path / "untuned")[1][0].train == {"epochs": 1, "batch_size": 32}


def test_a_failed_study_stops_the_grid_before_its_final_runs(tmp_path, monkeypatch):
    specs, tuning = grid(methods=("linear",))

    def database_gone(self, *args, **kwargs):  # the study's storage fails (a system boundary)
        raise RuntimeError("database is locked")

    monkeypatch.setattr(optuna.study.Study, "ask", database_gone)
    with pytest.raises(MedvtabError, match=r"tuning: 1 of 1 studies failed, the first breastmnist linear .*database "
                                           r"is locked; no final run started"):
        bench(tmp_path, specs, tuning)
    assert not (tmp_path / "bench.json").exists() and not list((tmp_path / "runs").iterdir())


def test_ties_go_to_the_lower_validation_loss_then_to_the_earlier_point():
    from medvtab.bench.tune import choose

    a, b, c = ({"values": {"lr": lr}, "val_score": 0.625, "val_loss": loss} for lr, loss in
               ((1e-4, 0.70), (3e-4, 0.61), (1e-3, 0.61)))
    assert choose([a, None, b, c]) is b
    better = {"values": {"lr": 3e-3}, "val_score": 0.7, "val_loss": 0.9}
    assert choose([a, b, c, better]) is better
    assert choose([None, None]) is None


def test_tuned_values_do_not_split_a_method_into_rows(tmp_path):
    """Each task has its own chosen lr; the main tables still show one row per method (the tuning section lists the
    values), while a grid that sets lr itself keeps one row per lr."""
    from medvtab.bench.report.load import Run
    from medvtab.bench.report.tables import row_key
    from medvtab.bench.store import RunSpec

    a, b = (RunSpec(task=t, method="linear", train={"lr": lr, "epochs": 1}) for t, lr in
            (("breastmnist", 1e-4), ("retinamnist", 1e-2)))
    tuned = [Run(s, s.run_id(), tmp_path, None, None, ("lr",)) for s in (a, b)]
    assert row_key(tuned[0]) == row_key(tuned[1])
    assert row_key(Run(a, a.run_id(), tmp_path, None, None)) != row_key(Run(b, b.run_id(), tmp_path, None, None))
