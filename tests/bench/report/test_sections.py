"""The report's tables, each checked against the metrics of the runs in a real tiny store (the ``bench_store``
fixture in tests/bench/conftest.py): main tables by modality, balanced accuracy and AUROC, the paired tests, the
missing and failed runs, the ablations, patient OOD, few-shot, routing and the header."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medvtab.bench.report.stats import paired_test
from medvtab.bench.report.tables import MISSING
from medvtab.bench.report.write import write_report
from medvtab.bench.store import RunSpec, run_dir, write_grid


def metrics_of(root: Path, **match) -> list[dict]:
    """metrics.json of the grid's finished runs whose spec fields equal ``match``."""
    grid = json.loads((root / "bench.json").read_text())
    out = []
    for spec in (RunSpec(**s) for s in grid["specs"]):
        if all(getattr(spec, k) == v for k, v in match.items()):
            path = run_dir(root, spec) / "metrics.json"
            if path.is_file():
                out.append(json.loads(path.read_text()))
    return out


def fmt(values) -> str:
    """What the report prints for accuracies over seeds (%, mean ± sample std)."""
    v = 100 * np.array(values)
    return f"{v.mean():.2f}" + (f" ± {v.std(ddof=1):.2f}" if len(v) > 1 else "")


def test_main_tables_by_modality_with_mean_std_best_and_floor(bench_store, bench_report):
    tables = bench_report.tables()
    assert {"main-colour", "main-other", "main-balanced-auroc", "paired-test"} <= set(tables)
    assert "main-x-ray" not in tables  # no X-ray task in the main group
    colour, other = tables["main-colour"], tables["main-other"]
    assert colour.columns == ["Method", "Total Params", "retinamnist"]
    assert other.columns == ["Method", "Total Params", "breastmnist"]
    labels = [row[0].text for row in other.rows]
    assert labels == ["linear", "partial", "lora", "dynamer", "ensemble (top-k by validation)",
                      "majority class (floor)"]  # the papers' order
    for method in ("linear", "partial", "dynamer"):
        accs = [m["accuracy"] for m in metrics_of(bench_store, group="main", task="breastmnist", method=method)]
        assert len(accs) == 2
        cell = other.row(method)[2]
        assert cell.text == fmt(accs) and "±" in cell.text
        assert cell.value == pytest.approx(np.mean(accs))
        ratio = metrics_of(bench_store, group="main", task="breastmnist", method=method)[0]["params_ratio"]
        assert other.row(method)[1].text == f"{ratio:.3f}X"
        one = metrics_of(bench_store, group="main", task="retinamnist", method=method)
        assert colour.row(method)[2].text.startswith(fmt([one[0]["accuracy"]]) + " (n=1)")  # one of two seeds
    assert all(c.text == MISSING for c in other.row("lora")[1:])  # in the grid, never finished
    best = max((other.row(m)[2].value, m) for m in ("linear", "partial", "dynamer"))[1]
    assert other.row(best)[2].best
    assert [m for m in ("linear", "partial", "dynamer") if other.row(m)[2].best] == [best] or \
        len({other.row(m)[2].value for m in ("linear", "partial", "dynamer")}) < 3  # ties are all marked
    majority = metrics_of(bench_store, group="main", task="breastmnist")[0]["majority_rate"]
    assert other.row("majority class (floor)")[2].text == f"{100 * majority:.2f}"
    assert not other.row("majority class (floor)")[2].best
    for method in ("linear", "partial", "dynamer"):  # the floor mark on cells at or below the majority rate
        cell = other.row(method)[2]
        assert (cell.mark == "†") == (cell.value <= majority + 1e-12)
    md = bench_report.md_path.read_text()
    assert "| Method | Total Params | breastmnist |" in md and "**" in md


def test_balanced_accuracy_and_auroc_table(bench_store, bench_report):
    table = bench_report.table("main-balanced-auroc")
    assert table.columns[1:] == ["retinamnist bal. acc.", "retinamnist AUROC", "breastmnist bal. acc.",
                                 "breastmnist AUROC"]
    runs = metrics_of(bench_store, group="main", task="breastmnist", method="dynamer")
    row = table.row("dynamer")
    assert row[3].text == fmt([m["balanced_accuracy"] for m in runs])
    assert row[4].text == fmt([m["auroc"] for m in runs])
    assert table.row("chance")[1].text == "20.00" and table.row("chance")[2].text == "50.00"  # 5-class retina
    assert any(c.best for c in table.column("breastmnist AUROC"))


def test_paired_test_table_from_the_store(bench_store, bench_report):
    table = bench_report.table("paired-test")
    assert [row[0].text for row in table.rows] == ["linear", "partial", "lora"]
    for method in ("linear", "partial"):
        pairs = []
        for task in ("retinamnist", "breastmnist"):
            for seed in (0, 1):
                ours = metrics_of(bench_store, group="main", task=task, method="dynamer", seed=seed)
                theirs = metrics_of(bench_store, group="main", task=task, method=method, seed=seed)
                if ours and theirs:
                    pairs.append((ours[0]["accuracy"], theirs[0]["accuracy"]))
        assert len(pairs) == 3  # breastmnist x 2 seeds + retinamnist x 1
        row = table.row(method)
        expected = paired_test(*zip(*pairs))
        assert row[1].text == "3" and row[4].text == expected["test"]
        assert row[3].value == pytest.approx(expected["mean_diff"])
        assert row[8].text != ""
    lora = table.row("lora")
    assert lora[1].text == "0" and lora[4].text == "none" and "no pairs" in lora[8].text
    assert any("Holm" in n for n in table.notes)


def test_missing_runs_are_listed(bench_store, bench_report):
    table = bench_report.table("missing")
    grid = json.loads((bench_store / "bench.json").read_text())
    specs = [RunSpec(**s) for s in grid["specs"]]
    missing = [s for s in specs if not (run_dir(bench_store, s) / "metrics.json").exists()]
    assert len(missing) == 2
    assert sorted(row[6].text for row in table.rows) == sorted(s.run_id() for s in missing)
    assert {row[7].text for row in table.rows} == {"not finished"}
    header = dict(bench_report.header)
    assert header["Runs"].startswith(f"{len(grid['specs']) - 2} of {len(grid['specs'])} grid runs finished")
    html_text = bench_report.html_path.read_text()
    for spec in missing:
        assert spec.run_id() in html_text
    gates = bench_report.table("ablation-gates")  # the unfinished variant still has its row
    assert [c.text for c in gates.row("✓")[:4]] == ["✓", "✗", MISSING, MISSING]


def test_failed_runs_show_their_error(bench_store, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(bench_store, root)
    grid = json.loads((root / "bench.json").read_text())
    lora = next(RunSpec(**s) for s in grid["specs"] if s["method"] == "lora")
    (root / "failures").mkdir()
    (root / "failures" / f"{lora.run_id()}.json").write_text(json.dumps(
        {"run_id": lora.run_id(), "error": "option 'rank': boom\nsecond line", "time": "2026-11-23 10:00:00"}))
    report = write_report(root, attention=False)
    row = next(r for r in report.table("missing").rows if r[6].text == lora.run_id())
    assert row[7].text == "failed (2026-11-23 10:00:00): option 'rank': boom"
    assert "of them 1 failed" in dict(report.header)["Runs"]
    assert "Not drawn (--no-attention)." in report.html_path.read_text()


def test_ablation_tables(bench_store, bench_report):
    gates = bench_report.table("ablation-gates")
    assert gates.columns[:3] == ["General gate", "Medical gate", "Total Params"]
    assert [(r[0].text, r[1].text) for r in gates.rows[:3]] == [("✗", "✗"), ("✓", "✗"), ("✓", "✓")]
    none = metrics_of(bench_store, group="ablation-gates", options={"gates": "none"})[0]
    assert gates.rows[0][3].text.startswith(f"{100 * none['accuracy']:.2f}")
    assert gates.rows[0][2].text == f"{none['params_ratio']:.3f}X"
    assert bench_report.table("ablation-gate-dim").rows[0][0].text == "1"
    gated = bench_report.table("ablation-gated-layers")
    assert gated.columns[:2] == ["General gated layers", "Medical gated layers"]
    assert [c.text for c in gated.rows[0][:2]] == ["1 (last:1)", "1 (last:1)"]
    adapters = bench_report.table("ablation-adapter-layers")
    assert adapters.columns[0] == "DynaMer layers" and adapters.rows[0][0].text == "1 (last:1)"
    keep = bench_report.table("ablation-keep-ratio")
    assert keep.columns[:5] == ["Tokens routed", "Skip mode", "ms per batch", "Speed-up vs 100 %", "Images/s"]
    rows = {(r[0].text, r[1].text): r for r in keep.rows[:-1]}
    assert set(rows) == {("100 %", "adapter"), ("100 %", "later-blocks"), ("50 %", "later-blocks")}
    group = "ablation-keep-ratio"
    full_block = metrics_of(bench_store, group=group, options={"keep_ratio": 1.0, "skip_mode": "later-blocks"})[0]
    half_block = metrics_of(bench_store, group=group, options={"keep_ratio": 0.5, "skip_mode": "later-blocks"})[0]
    assert rows[("100 %", "later-blocks")][2].text == f"{full_block['ms_per_batch']:.1f}"
    assert rows[("100 %", "later-blocks")][3].text == "1.00x"
    speedup = full_block["ms_per_batch"] / half_block["ms_per_batch"]
    assert rows[("50 %", "later-blocks")][3].value == pytest.approx(speedup)
    assert any("ms per evaluation batch of 256 images" in n for n in keep.notes)


def test_patient_ood_table(bench_store, bench_report):
    table = bench_report.table("ood-0")
    assert table.title == "kermany-cxr: 40 seen / 20 unseen patients"
    dyn = metrics_of(bench_store, group="patient-ood", method="dynamer")[0]
    row = table.row("dynamer")
    col = {name: i for i, name in enumerate(table.columns)}
    assert row[col["Unseen patients"]].text == str(dyn["unseen"]["patients"]) == "20"
    assert row[col["Unseen images"]].text == str(dyn["unseen"]["images"])
    assert row[col["Seen test images"]].text == str(dyn["seen"]["images"])
    assert row[col["Seen acc."]].text == fmt([dyn["seen"]["accuracy"]])
    assert row[col["Unseen acc."]].text == fmt([dyn["unseen"]["accuracy"]])
    assert row[col["Acc. drop"]].value == pytest.approx(dyn["seen"]["accuracy"] - dyn["unseen"]["accuracy"])
    assert row[col["AUROC drop"]].value == pytest.approx(dyn["seen"]["auroc"] - dyn["unseen"]["auroc"])


def test_fewshot_and_routing_tables(bench_store, bench_report):
    fewshot = bench_report.table("fewshot")
    assert [c.split(" @ ")[1] for c in fewshot.columns[1:]] == ["0.25", "0.5"]
    assert [r[0].text for r in fewshot.rows] == ["linear", "dynamer"]
    linear = metrics_of(bench_store, group="fewshot", method="linear", train_fraction=0.5)[0]
    assert fewshot.row("linear")[2].text == fmt([linear["accuracy"]])
    routing = bench_report.table("routing")
    runs = metrics_of(bench_store, group="main", method="dynamer")
    assert [r[0].text for r in routing.rows] == sorted(runs[0]["routing"], key=int)
    usage = np.mean([m["routing"]["0"]["general"]["expert_usage"] for m in runs], axis=0)
    assert routing.rows[0][1].text == " / ".join(f"{u:.2f}" for u in usage)
    gate = np.mean([m["routing"]["0"]["medical"]["mean_gate"] for m in runs])
    assert routing.rows[0][5].value == pytest.approx(gate)


def test_header_states_date_machine_suite_seeds_backbones_and_command(bench_store, bench_report):
    header = dict(bench_report.header)
    config = json.loads(next((bench_store / "runs").glob("*/config.json")).read_text())
    assert header["Suite"] == "test" and header["Seeds"] == "0, 1"
    assert config["machine"]["platform"] in header["Machine"] and config["machine"]["torch"] in header["Machine"]
    assert header["Backbones (general + medical)"] == "tiny-general + tiny-medical"
    assert "pytest tests/bench" in header["Reproduce"] and "medvtab report" in header["Reproduce"]
    assert header["Generated"].endswith("UTC")


def test_a_grid_with_nothing_finished_still_reports(tmp_path):
    specs = [RunSpec(task="breastmnist", method="dynamer"), RunSpec(group="patient-ood", task="kermany-cxr",
                                                                    method="linear", protocol="patient-ood")]
    write_grid(tmp_path, "empty", specs)
    report = write_report(tmp_path)
    assert len(report.table("missing").rows) == 2 and not report.figures()
    page = report.html_path.read_text()
    assert "No finished DynaMer run" in page and "0 of 2 grid runs finished" in page
