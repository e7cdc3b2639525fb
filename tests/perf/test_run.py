"""``medvtab perf`` end to end (quick profile): every section reports what it measures.

No timing is asserted here (a shared test machine makes any threshold flaky): the tool measures the ratios,
these tests check that it reports them.
"""
from __future__ import annotations

import itertools
import json

import pytest
from typer.testing import CliRunner

from medvtab.cli import app

REQUIRED_RATIOS = ("both_over_one", "dynamer_over_both", "block_skip_speedup_0.5", "block_skip_speedup_0.3",
                   "adapter_skip_speedup_0.5", "linear_epoch_speedup")


@pytest.fixture(scope="module")
def quick_run():
    result = CliRunner().invoke(app, ["perf", "--json", "--quick"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_quick_perf_json_has_every_measurement(quick_run):
    r = quick_run
    for key in REQUIRED_RATIOS:
        assert isinstance(r["ratios"][key], float) and r["ratios"][key] > 0, key
    for key in ("platform", "torch", "threads", "dtype", "device", "processor"):
        assert key in r["machine"], key
    config = r["config"]
    assert config["general"] == "tiny-general" and config["medical"] == "tiny-medical"
    assert config["profile"] == "quick" and config["batch_sizes"]["backbones"] == [2]
    # backbones
    row = r["backbones"]["rows"][0]
    assert {"one_s", "both_s", "both_over_one"} <= set(row)
    assert {"median", "iqr", "q1", "q3"} <= set(row["one_s"])
    # skip, the Table 7 analogue: every skip mode, four keep ratios, adapter-only time beside end to end
    table = r["skip"]["tables"][0]
    assert {(x["skip_mode"], x["keep_ratio"]) for x in table["rows"]} == set(
        itertools.product(("adapter", "later-blocks", "block"), (1.0, 0.5, 0.3, 0.1)))
    for x in table["rows"]:
        assert x["adapter_seconds_per_batch"]["median"] <= x["seconds_per_batch"]["median"] * 5
        assert x["flops_per_image"] > 0
    # training steps, relative to DynaMer, with memory
    methods = {x["method"]: x for x in r["train_step"]["rows"]}
    assert set(methods) == {"linear", "lora", "dynamer"}
    assert methods["dynamer"]["relative_to_dynamer"]["median"] == pytest.approx(1.0)
    assert all(x["memory"]["peak_mb"] > 0 for x in methods.values())
    # MoE dense vs gathered: equal outputs, a pick per size
    assert r["moe"]["rows"] and all(x["equal_output"] for x in r["moe"]["rows"])
    assert all(x["auto_picks"] in ("dense", "gathered") for x in r["moe"]["rows"])
    # loading vs training
    assert r["loading"]["loading_images_per_s"] > 0 and r["loading"]["training_images_per_s"] > 0
    # FLOPs
    flops = r["flops"]["per_image"]
    assert flops["both_backbones"] == 2 * flops["one_backbone"]  # the tiny pair shares one architecture
    assert flops["dynamer_block_0.1"] < flops["dynamer_block_0.5"] < flops["dynamer_block_1.0"]
    assert r["flops"]["achieved"]["rows"]
    # linear probing epochs
    assert len(r["linear_probe"]["epoch_seconds"]) == 2
    names = {t["name"].split(" (")[0] for t in r["targets"]}
    assert {"both_over_one", "dynamer_over_both", "block_skip_speedup_0.5", "linear_epoch_speedup"} <= names


def test_bad_batch_sizes_are_named():
    result = CliRunner().invoke(app, ["perf", "--quick", "--batch-sizes", "4,x"])
    assert result.exit_code != 0
    assert "--batch-sizes" in str(result.exception)
