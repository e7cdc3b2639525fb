"""`medvtab report`: tables, statistics, figures, attention maps, escaping and errors, on real tiny stores
written through the real path (the ``bench_store`` fixture in this folder's conftest)."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medvtab.bench.attention import attention_probs, patch_map, run_attention
from medvtab.bench.report import MISSING, holm, load_bench, paired_test, verdict, write_report
from medvtab.bench.store import RunSpec, run_dir, write_grid
from medvtab.errors import MedvtabError

XSS = "<script>alert(1)</script>"


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


# --------------------------------------------------------------------------------------------- statistics
def test_wilcoxon_on_known_pairs():
    ours = np.linspace(0.60, 0.70, 10)
    res = paired_test(ours, ours - np.linspace(0.01, 0.10, 10))  # DynaMer better in every one of 10 pairs
    assert res["test"] == "Wilcoxon signed-rank" and res["n"] == 10
    assert (res["wins"], res["ties"], res["losses"]) == (10, 0, 0)
    assert res["statistic"] == 0.0
    assert res["p"] == pytest.approx(2 / 2 ** 10)  # exact: only the all-positive sign pattern is as extreme
    assert res["mean_diff"] == pytest.approx(0.055)
    assert verdict(res, res["p"]) == "significant: DynaMer better"
    assert verdict(res, 0.2).startswith("not significant")


def test_wilcoxon_without_power_says_so():
    a = np.array([0.5, 0.6, 0.7, 0.8, 0.5, 0.6, 0.7])
    b = a - np.array([0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.0])  # 7 pairs, only 4 non-zero differences
    res = paired_test(a, b)
    assert res["test"] == "Wilcoxon signed-rank" and res["ties"] == 3
    assert "cannot reach significance" in res["note"] and "0.125" in res["note"]  # 2 / 2**4
    assert not res["p"] < 0.05
    assert verdict(res, res["p"]).startswith("not significant")


def test_paired_t_test_for_few_pairs():
    from scipy.stats import ttest_rel

    a, b = [0.71, 0.65, 0.80, 0.62], [0.70, 0.60, 0.74, 0.61]
    res = paired_test(a, b)
    expected = ttest_rel(a, b)
    assert res["test"] == "paired t-test" and res["n"] == 4
    assert res["statistic"] == pytest.approx(expected.statistic)
    assert res["p"] == pytest.approx(expected.pvalue)
    assert "little power" in res["note"]


def test_too_few_pairs_or_no_difference_means_no_test():
    two = paired_test([0.9, 0.8], [0.1, 0.2])
    assert two["test"] == "none" and math.isnan(two["p"])
    assert "not significant" in two["note"] and "no power" in two["note"]
    assert verdict(two, math.nan) == two["note"]
    same = paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["test"] == "none" and "no difference" in same["note"]
    constant = paired_test([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])
    assert constant["test"] == "paired t-test" and math.isnan(constant["p"]) and "undefined" in constant["note"]
    assert paired_test([], [])["note"].startswith("no pairs")
    with pytest.raises(ValueError):
        paired_test([0.1, 0.2], [0.1])


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.02, math.nan, 0.5])
    assert adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.5)
    assert holm([0.04, 0.01]) == pytest.approx([0.04, 0.02])
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1, and never below a smaller p's adjusted value


# --------------------------------------------------------------------------------------------- tables
def test_main_tables_by_modality_with_mean_std_best_and_floor(bench_store, bench_report):
    tables = bench_report.tables()
    assert {"main-colour", "main-other", "main-balanced-auroc", "paired-test"} <= set(tables)
    assert "main-x-ray" not in tables  # no X-ray task in the main group
    colour, other = tables["main-colour"], tables["main-other"]
    assert colour.columns == ["Method", "Total Params", "retinamnist"]
    assert other.columns == ["Method", "Total Params", "breastmnist"]
    labels = [row[0].text for row in other.rows]
    assert labels == ["linear", "partial", "lora", "dynamer", "majority class (floor)"]  # the papers' order
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
    import shutil

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
    assert bench_report.table("ablation-layers").rows[0][0].text == "1 (last:1)"
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


# --------------------------------------------------------------------------------------------- figures
def test_figures_written_and_embedded(bench_report):
    figures = bench_report.figures()
    assert set(figures) == {"params_accuracy", "data_efficiency", "routing", "attention"}
    for ref in figures.values():
        data = ref.path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
        assert ref.path.parent == bench_report.html_path.parent / "figures"
    html_text = bench_report.html_path.read_text()
    assert html_text.count('src="data:image/png;base64,') == 4
    assert "http://" not in html_text and "https://" not in html_text  # self-contained
    md = bench_report.md_path.read_text()
    for ref in figures.values():
        assert f"](figures/{ref.path.name})" in md
    leftovers = [p.name for p in bench_report.html_path.parent.rglob(".*.tmp")]
    assert not leftovers  # atomic writes leave no temp files


def test_attention_maps_of_a_dynamer_run(bench_store):
    grid = json.loads((bench_store / "bench.json").read_text())
    spec = next(RunSpec(**s) for s in grid["specs"] if s["method"] == "dynamer" and s["group"] == "main")
    maps = run_attention(run_dir(bench_store, spec), count=4)
    assert maps.images.shape == (4, 28, 28, 3) or maps.images.shape[:3] == (4, 28, 28)
    for stream in ("general", "medical"):
        m = maps.maps[stream]
        assert m.shape == (4, 7, 7) and np.isfinite(m).all() and (m >= 0).all()
        assert (m.reshape(4, -1).sum(1) <= 1 + 1e-5).all()  # CLS attention over patches: part of a softmax
        assert maps.kinds[stream] == "CLS-to-patch attention"
    assert sorted(maps.labels) == [0, 1, 2, 3]  # one image of each class first (retinamnist: 5 grades)
    # later-blocks skipping: the last block saw the CLS and ceil(0.5 * 49) = 25 patches; the others have no attention
    skip = next(RunSpec(**s) for s in grid["specs"] if s["options"].get("skip_mode") == "later-blocks"
                and s["options"].get("keep_ratio") == 0.5)
    skipped = run_attention(run_dir(bench_store, skip), count=2)
    for stream in ("general", "medical"):
        assert (np.isnan(skipped.maps[stream]).reshape(2, -1).sum(1) == 49 - 25).all()


def _reconstruct(attn, probs, tokens_normed):
    """The attention module's output from our probabilities and its own value projection."""
    b, n, c = tokens_normed.shape
    heads = attn.num_heads
    v = attn.qkv(tokens_normed).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)[2]
    return attn.proj((probs @ v).transpose(1, 2).reshape(b, n, -1))


def test_vit_attention_probs_reproduce_the_block():
    from medvtab.backbones import load_backbone

    backbone = load_backbone("tiny-general")
    torch.manual_seed(0)
    tokens = backbone.embed(backbone.preprocess(torch.randint(0, 255, (2, 3, 28, 28), dtype=torch.uint8)))
    blk = backbone.model.blocks[3]
    with torch.no_grad():
        probs, seq = attention_probs(backbone, 3, tokens)
        assert probs.shape == (2, 3, 50, 50) and torch.allclose(probs.sum(-1), torch.ones(2, 3, 50))
        expected = blk.attn(blk.norm1(tokens))
        assert torch.allclose(_reconstruct(blk.attn, probs, blk.norm1(seq)), expected, atol=1e-5)
        keep = torch.tensor([[0, 5, 9], [1, 2, 48]])
        probs, seq = attention_probs(backbone, 3, tokens, keep)
        assert probs.shape == (2, 3, 4, 4) and torch.equal(seq[:, 1:], tokens[torch.arange(2)[:, None], keep + 1])


def test_sam_attention_probs_reproduce_the_block():
    from timm.models.vision_transformer_sam import VisionTransformerSAM

    from medvtab.backbones.sam import SamBackbone

    torch.manual_seed(0)
    model = VisionTransformerSAM(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, use_rel_pos=True,
                                 window_size=2, global_attn_indexes=(1,), num_classes=0, neck_chans=16)
    for name, p in model.named_parameters():
        if "rel_pos" in name:
            torch.nn.init.normal_(p, std=0.5)  # zeros at init would hide a wrong bias
    backbone = SamBackbone(model, spec="tiny-sam", input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, random_init=True)
    tokens = backbone.embed(backbone.preprocess(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)))
    blk = model.blocks[1]
    with torch.no_grad():
        probs, seq = attention_probs(backbone, 1, tokens)
        expected = blk.attn(blk.norm1(tokens.view(2, 4, 4, -1))).flatten(1, 2)
        assert torch.allclose(_reconstruct(blk.attn, probs, blk.norm1(seq)), expected, atol=1e-5)
        grid, kind = patch_map(backbone, probs, None)
        assert grid.shape == (2, 4, 4) and kind.startswith("mean attention received")
        with pytest.raises(MedvtabError, match="windowed"):
            attention_probs(backbone, 0, tokens)


# --------------------------------------------------------------------------------------------- escaping
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


# --------------------------------------------------------------------------------------------- errors, CLI
def test_bad_directories_are_user_errors(run_medvtab, tmp_path, bench_store):
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "bench.json").write_text("{ not json")
    not_object = tmp_path / "list"
    not_object.mkdir()
    (not_object / "bench.json").write_text("[1, 2]")
    run = next(p for p in (bench_store / "runs").iterdir() if p.is_dir())
    for path, message in ((tmp_path / "absent", "no such directory"), (empty, "bench.json: not found"),
                          (corrupt, "unreadable results file"), (not_object, "malformed grid"),
                          (run, "bench.json: not found"), (run / "metrics.json", "not a directory")):
        code, out, err = run_medvtab("report", path)
        assert code == 2, (path, err)
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
        with pytest.raises(MedvtabError):
            load_bench(path)


def test_corrupt_run_metrics_are_user_errors(run_medvtab, tmp_path):
    spec = RunSpec(task="breastmnist", method="linear")
    write_grid(tmp_path, "broken", [spec])
    d = run_dir(tmp_path, spec)
    d.mkdir(parents=True)
    (d / "metrics.json").write_text('{"accuracy": 0.5')
    (d / "config.json").write_text("{}")
    code, _, err = run_medvtab("report", tmp_path)
    assert code == 2 and "metrics.json: unreadable results file" in err
    assert not (tmp_path / "report.html").exists()


def test_a_grid_with_nothing_finished_still_reports(tmp_path):
    specs = [RunSpec(task="breastmnist", method="dynamer"), RunSpec(group="patient-ood", task="kermany-cxr",
                                                                    method="linear", protocol="patient-ood")]
    write_grid(tmp_path, "empty", specs)
    report = write_report(tmp_path)
    assert len(report.table("missing").rows) == 2 and not report.figures()
    page = report.html_path.read_text()
    assert "No finished DynaMer run" in page and "0 of 2 grid runs finished" in page


def test_cli_writes_the_report_where_asked(run_medvtab, bench_store, tmp_path):
    out = tmp_path / "site" / "results.html"
    code, stdout, _ = run_medvtab("report", bench_store, "--out", out, "--no-attention")
    assert code == 0
    written = json.loads(stdout)
    assert written["html"] == str(out) and written["markdown"] == str(out.with_suffix(".md"))
    assert out.is_file() and out.with_suffix(".md").is_file()
    assert sorted(Path(f).name for f in written["figures"]) == ["data_efficiency.png", "params_accuracy.png",
                                                                "routing.png"]
    assert not (bench_store / "report.html").exists()  # the store itself is only read


def test_cli_subprocess_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "medvtab.cli", "report", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


def test_attention_refuses_backbones_that_changed_since_the_run(bench_store, tmp_path):
    import shutil

    grid = json.loads((bench_store / "bench.json").read_text())
    spec = next(RunSpec(**s) for s in grid["specs"] if s["method"] == "dynamer" and s["group"] == "main")
    run = tmp_path / "run"
    shutil.copytree(run_dir(bench_store, spec), run)
    config = json.loads((run / "config.json").read_text())
    config["backbones"][0]["random_init"] = not config["backbones"][0]["random_init"]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(MedvtabError, match="cannot be rebuilt faithfully"):
        run_attention(run)
