"""The scaling section: the slope fit and its bootstrap interval on made-up curves of known slope, and the section
of a real store written by `medvtab bench`'s grid runner (two families, two sizes, two seeds, an ultrasound task
and an unregistered one: two modalities), each number checked against the runs' files."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medvtab.bench.grid import expand_grid, parse_grid
from medvtab.bench.report.stats import log_slope, slope_interval, trend_verdict
from medvtab.bench.report.write import write_report
from medvtab.bench.runner import run_grid
from medvtab.bench.store import RunSpec, run_dir
from medvtab.engine import rundir

from ..test_runner import Quiet

RATIOS = np.array([1.001, 1.01, 1.04, 1.17, 1.39])


def test_slope_of_a_known_curve_and_its_interval():
    rng = np.random.default_rng(3)
    x, points = np.repeat(RATIOS, 3), np.repeat(np.arange(len(RATIOS)), 3)
    y = 60 + 20 * np.log10(x) + rng.normal(0, 0.3, len(x))  # 20 points per 10x Total Params
    slope, low, high = slope_interval(x, y, points)
    assert slope == pytest.approx(20, abs=2) and low < 20 < high and low > 0
    assert trend_verdict(slope, low, high) == "more parameters help"
    assert slope_interval(x, 100 - y, points)[2] < 0 and trend_verdict(-2, -3, -1) == "more parameters hurt"
    assert slope_interval(x, y, points) == (slope, low, high)  # a fixed RNG seed: reproducible


def test_a_flat_curve_spans_zero():
    seeds = np.array([[59.0, 60.0, 61.0], [61.0, 59.0, 60.0], [60.0, 61.0, 59.0], [59.0, 61.0, 60.0],
                      [61.0, 60.0, 59.0]])  # every point the same three values: no trend at all
    slope, low, high = slope_interval(np.repeat(RATIOS, 3), seeds.ravel(), np.repeat(np.arange(5), 3))
    assert slope == pytest.approx(0, abs=1e-9) and low < 0 < high
    assert trend_verdict(slope, low, high) == "no clear trend (interval spans 0)"


def test_each_task_has_its_own_intercept_and_one_seed_has_no_interval():
    x = np.concatenate([RATIOS[:3], RATIOS[2:]])  # two tasks over different ranges, parallel lines 30 apart
    y = np.concatenate([80 + 10 * np.log10(RATIOS[:3]), 50 + 10 * np.log10(RATIOS[2:])])
    assert log_slope(x, y, strata=[0] * 3 + [1] * 3) == pytest.approx(10)
    assert log_slope(x, y) < 0  # pooled without intercepts, the tasks' offset reads as a trend
    slope, low, high = slope_interval(RATIOS, 50 + 10 * np.log10(RATIOS), np.arange(5))
    assert slope == pytest.approx(10) and math.isnan(low) and math.isnan(high)
    assert trend_verdict(slope, low, high) == "no interval (one seed per point)"
    one_size = slope_interval([1.1] * 3, [60.0, 61.0, 62.0], [0] * 3)
    assert math.isnan(one_size[0]) and trend_verdict(*one_size).startswith("no trend to fit")


@pytest.fixture(scope="module")
def scaling_store(tmp_path_factory, small_task):
    root = tmp_path_factory.mktemp("scaling") / "store"
    grid = parse_grid({"name": "scaling-test", "seeds": 2, "tasks": ["breastmnist", str(small_task)],
                       "train_size": 32, "train": {"epochs": 1, "batch_size": 32}, "groups": {
                           "scaling-vpt-deep": {"methods": ["vpt-deep"], "sweep": {"num_prompts": [1, 10]}},
                           "scaling-adapter-general": {"methods": ["adapter-general"],
                                                       "sweep": {"bottleneck": [6, 24]}}}})
    summary = run_grid(root, expand_grid(grid), suite="scaling-test", executor="serial", console=Quiet())
    assert len(summary.finished) == 2 * 2 * 2 * 2
    return root


def finished(root) -> list[tuple]:
    grid = json.loads((root / "bench.json").read_text())
    out = []
    for spec in (RunSpec(**s) for s in grid["specs"]):
        d = run_dir(root, spec)
        out.append((spec, json.loads((d / "metrics.json").read_text()), rundir.read_predictions(d / "predictions.npz")))
    return out


def test_section_from_a_real_store(scaling_store):
    report = write_report(scaling_store, attention=False)
    section = next(s for s in report.sections if s.key == "scaling")
    assert section.title == "Scaling of tunable parameters"
    assert {f.key for f in section.figures} == {"scaling-ultrasound", "scaling-other"}
    for f in section.figures:
        assert f.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "group-scaling-vpt-deep" not in report.tables()  # not repeated under "Other groups"
    runs = finished(scaling_store)
    points, slopes = report.table("scaling-points"), report.table("scaling-slopes")
    for family, option, sizes in (("vpt-deep (num_prompts)", "num_prompts", (1, 10)),
                                  ("adapter-general (bottleneck)", "bottleneck", (6, 24))):
        method = family.split()[0]
        pairs = []
        for task, mod in (("breastmnist", "ultrasound"), (None, "other")):
            these = [(s, m, p) for s, m, p in runs if s.method == method and (s.task == task or
                                                                               (task is None and "/" in s.task))]
            val_best = []
            for size in sizes:
                at = [(s, m, p) for s, m, p in these
                      if s.options.get(option, 10 if option == "num_prompts" else None) == size]
                assert len(at) == 2  # two seeds
                row = next(r for r in points.rows if r[0].text == mod and r[2].text == family
                           and r[3].text == f"{option}={size}")
                acc = 100 * np.array([m["accuracy"] for _, m, _ in at])
                assert row[5].text == f"{at[0][1]['params_ratio']:.3f}X"
                assert row[7].text == f"{acc.mean():.2f} ± {acc.std(ddof=1):.2f}"
                val = [float((p["val_probs"].argmax(1) == p["val_labels"]).mean()) for _, _, p in at]
                val_best.append(np.mean(val))
                pairs += [(m["params_ratio"], 100 * m["accuracy"], size, mod) for _, m, _ in at]
            plateau = [r[3].text for r in points.rows if r[0].text == mod and r[2].text == family
                       and r[8].text == "plateau"]
            best = sizes[int(np.argmax(val_best))]  # np.argmax: the first (smaller) on a tie
            assert plateau == [f"{option}={best}"]
        for mod in ("ultrasound", "other"):
            mine = [p for p in pairs if p[3] == mod]
            row = next(r for r in slopes.rows if r[0].text == mod and r[1].text == family)
            slope, low, high = slope_interval([p[0] for p in mine], [p[1] for p in mine], [p[2] for p in mine])
            assert row[3].text == "4" and row[4].text == f"{slope:+.2f}"
            assert row[5].text == f"[{low:+.2f}, {high:+.2f}]" and row[9].text == trend_verdict(slope, low, high)
            assert f"{mod}, {family}: {trend_verdict(slope, low, high)}" in " ".join(section.paragraphs)
    md = report.md_path.read_text()
    assert "## Scaling of tunable parameters" in md and "figures/scaling_ultrasound.png" in md
