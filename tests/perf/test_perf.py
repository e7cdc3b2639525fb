"""``medvtab perf`` and the optimisations it measures: the fast paths must give the reference's results.

No timing is asserted here (a shared test machine makes any threshold flaky): the tool measures the ratios,
these tests check that it reports them and that every fast path computes what the reference computes.
"""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from medvtab.backbones import load_backbone
from medvtab.methods import build_model, make_config
from medvtab.methods.dynamer import GATHER_MIN_ROWS, SharedExperts
from medvtab.perf.timing import interleaved, quartiles

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (6, 1, 28, 28), generator=g, dtype=torch.uint8)


def trained_dynamer(pair, seed=0, **options):
    """A DynaMer whose trainable weights have moved away from the identity start (so every path matters)."""
    torch.manual_seed(seed)
    model = build_model("dynamer", make_config("dynamer", options), *pair, 3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return model


def logits(model, images, fast: bool, moe: str = "auto", mode=torch.no_grad):
    model.set_fast(fast)
    model.set_moe_impl(moe)
    with mode():
        return model(images).clone()


# --- the command ---------------------------------------------------------------------------------------------

REQUIRED_RATIOS = ("both_over_one", "dynamer_over_both", "block_skip_speedup_0.5", "block_skip_speedup_0.3",
                   "adapter_skip_speedup_0.5", "linear_epoch_speedup")


@pytest.fixture(scope="module")
def quick_run():
    from medvtab.cli import app

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
    # 1. backbones
    row = r["backbones"]["rows"][0]
    assert {"one_s", "both_s", "both_over_one"} <= set(row)
    assert {"median", "iqr", "q1", "q3"} <= set(row["one_s"])
    # 2. the Table 7 analogue: every skip mode, four keep ratios, adapter-only time beside end to end
    table = r["skip"]["tables"][0]
    assert {(x["skip_mode"], x["keep_ratio"]) for x in table["rows"]} == set(
        itertools.product(("adapter", "later-blocks", "block"), (1.0, 0.5, 0.3, 0.1)))
    for x in table["rows"]:
        assert x["adapter_seconds_per_batch"]["median"] <= x["seconds_per_batch"]["median"] * 5
        assert x["flops_per_image"] > 0
    # 3. training steps, relative to DynaMer, with memory
    methods = {x["method"]: x for x in r["train_step"]["rows"]}
    assert set(methods) == {"linear", "lora", "dynamer"}
    assert methods["dynamer"]["relative_to_dynamer"]["median"] == pytest.approx(1.0)
    assert all(x["memory"]["peak_mb"] > 0 for x in methods.values())
    # 4. MoE dense vs gathered: equal outputs, a pick per size
    assert r["moe"]["rows"] and all(x["equal_output"] for x in r["moe"]["rows"])
    assert all(x["auto_picks"] in ("dense", "gathered") for x in r["moe"]["rows"])
    # 5. loading vs training
    assert r["loading"]["loading_images_per_s"] > 0 and r["loading"]["training_images_per_s"] > 0
    # 6. FLOPs
    flops = r["flops"]["per_image"]
    assert flops["both_backbones"] == 2 * flops["one_backbone"]  # the tiny pair shares one architecture
    assert flops["dynamer_block_0.1"] < flops["dynamer_block_0.5"] < flops["dynamer_block_1.0"]
    assert r["flops"]["achieved"]["rows"]
    # 7. linear probing epochs
    assert len(r["linear_probe"]["epoch_seconds"]) == 2
    names = {t["name"].split(" (")[0] for t in r["targets"]}
    assert {"both_over_one", "dynamer_over_both", "block_skip_speedup_0.5", "linear_epoch_speedup"} <= names


def test_perf_tables_for_people(pair):
    from rich.console import Console

    from medvtab.perf.report import print_tables
    from medvtab.perf.suite import PerfConfig, run_perf

    result = run_perf(PerfConfig.for_profile("cpu", quick=True, methods=("dynamer",), threads=1))
    console = Console(record=True, width=200)
    print_tables(result, console)
    text = console.export_text()
    for title in ("backbones forward", "DynaMer inference vs keep ratio", "training step", "MoE adapter",
                  "loading", "FLOPs", "linear probing", "targets"):
        assert title in text, title


def test_bad_batch_sizes_are_named():
    from medvtab.cli import app

    result = CliRunner().invoke(app, ["perf", "--quick", "--batch-sizes", "4,x"])
    assert result.exit_code != 0
    assert "--batch-sizes" in str(result.exception)


# --- fast paths give the reference's results ----------------------------------------------------------------

@pytest.mark.parametrize("skip_mode, keep_ratio",
                         list(itertools.product(("adapter", "later-blocks", "block"), (1.0, 0.5, 0.3, 0.1))))
def test_fast_and_reference_logits_agree_in_evaluation(pair, images, skip_mode, keep_ratio):
    model = trained_dynamer(pair, keep_ratio=keep_ratio, skip_mode=skip_mode).eval()
    reference = logits(model, images, fast=False)
    assert reference.abs().max() > 0.01
    for mode in (torch.no_grad, torch.inference_mode):  # inference mode writes stream tensors in place
        torch.testing.assert_close(logits(model, images, True, mode=mode), reference, **TOL)
    torch.testing.assert_close(logits(model, images, True, moe="gathered"), reference, **TOL)
    torch.testing.assert_close(logits(model, images, True, moe="dense"), reference, **TOL)


@pytest.mark.parametrize("options", [{"gate_dim": "width"}, {"gate_dim": "width/4", "keep_ratio": 0.5},
                                     {"gates": "general", "keep_ratio": 0.3, "skip_mode": "later-blocks"},
                                     {"gates": "none", "keep_ratio": 0.5, "top_k": 3}])
def test_fast_and_reference_logits_agree_for_every_gate_shape(pair, images, options):
    """A one-value gate folds into the expert weights on the fast path; wider gates multiply the change."""
    model = trained_dynamer(pair, **options).eval()
    reference = logits(model, images, fast=False)
    for moe in ("dense", "gathered"):
        torch.testing.assert_close(logits(model, images, True, moe=moe, mode=torch.inference_mode), reference, **TOL)


@pytest.mark.parametrize("skip_mode, keep_ratio", [("adapter", 1.0), ("adapter", 0.5), ("later-blocks", 0.3),
                                                    ("block", 0.5)])
def test_fast_and_reference_agree_in_training(pair, images, skip_mode, keep_ratio):
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    grads = {}
    for fast in (False, True):
        model = trained_dynamer(pair, keep_ratio=keep_ratio, skip_mode=skip_mode).train()
        model.set_fast(fast)
        out = model(images)
        aux = model.auxiliary_loss()
        (torch.nn.functional.cross_entropy(out, labels) + aux).backward()
        grads[fast] = (out.detach(), aux.detach(),
                       {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (ref_out, ref_aux, ref_grads), (out, aux, fast_grads) = grads[False], grads[True]
    torch.testing.assert_close(out, ref_out, **TOL)
    torch.testing.assert_close(aux, ref_aux, **TOL)
    assert set(fast_grads) == set(ref_grads)
    for name, g in ref_grads.items():
        torch.testing.assert_close(fast_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_last_layer_computes_only_what_the_head_reads(pair, images):
    """After the last block only the CLS tokens reach the head (both streams have one, and it merges): in
    evaluation the last layer adapts those alone; with statistics recording it still routes every token."""
    model = trained_dynamer(pair, keep_ratio=0.5, skip_mode="later-blocks").eval()
    seen = []
    handle = model.runner.hooks["3"].experts.down.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    with torch.no_grad():
        model(images)
        assert seen == [1, 1]  # one pass per stream, the CLS pair only
        seen.clear()
        model.set_record_stats(True)
        model(images)
        model.set_record_stats(False)
        # every token pair is routed again: one pass of the experts serves both streams' kept rows, since
        # 2 x (ceil(0.5 * 49) + 1) rows >= 50
        assert seen == [50] and 2 * (math.ceil(0.5 * 49) + 1) >= 50
        seen.clear()
        xg, xm = model.runner(images)  # the runner alone keeps every token
        # every token pair is routed again: one pass of the experts serves both streams' kept rows, since
        # 2 x (ceil(0.5 * 49) + 1) rows >= 50
        assert seen == [50] and 2 * (math.ceil(0.5 * 49) + 1) >= 50
    handle.remove()


@pytest.fixture(scope="module")
def vitb_pair(vitb_checkpoints):
    return (load_backbone(f"dinov2-vitb14@{vitb_checkpoints['dinov2']}", depth=2),
            load_backbone(f"lvmmed-vitb@{vitb_checkpoints['lvmmed']}", depth=2))


@pytest.mark.parametrize("options", [{}, {"keep_ratio": 0.5, "skip_mode": "later-blocks"}, {"keep_ratio": 0.3},
                                     {"keep_ratio": 0.3, "skip_mode": "block"}])
def test_fast_and_reference_logits_agree_on_vitb_layouts(vitb_pair, options):
    """DINOv2 (CLS, not merged: its summary never sees the last layer) + LVM-Med (SAM: windowed blocks, mean-pooled
    summary, every token read), depth-reduced."""
    model = trained_dynamer(vitb_pair, **options).eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    reference = logits(model, images, fast=False)
    torch.testing.assert_close(logits(model, images, True, mode=torch.inference_mode), reference, **TOL)
    torch.testing.assert_close(logits(model, images, True, moe="gathered"), reference, **TOL)


def test_later_blocks_mode_hands_the_adapted_rows_to_the_next_block(pair, images):
    """With ``carry`` a ``later-blocks``-mode layer returns the next block's input rows instead of writing them into
    the stream tensors: the same values the plain call writes there."""
    from medvtab.backbones.base import gather_tokens

    model = trained_dynamer(pair, keep_ratio=0.3, skip_mode="later-blocks").eval()
    layer = model.runner.hooks["0"]
    with torch.no_grad():
        xg, xm = model.runner.embed(images)
        plain_g, plain_m, plain = layer(xg, xm)
        _, _, handed = layer(xg, xm, carry=True)
    assert plain.rows == (None, None)
    for backbone, tokens, keep, rows in zip(pair, (plain_g, plain_m), handed.keep, handed.rows):
        assert rows.shape == (6, 1 + math.ceil(0.3 * 49), 96)
        torch.testing.assert_close(rows, gather_tokens(tokens, backbone.block_rows(keep)), rtol=0, atol=0)


def test_run_block_with_a_handed_over_subset_or_in_place_equals_the_plain_one(pair):
    general = pair[0]
    tokens = torch.randn(3, 50, 96, generator=torch.Generator().manual_seed(2))
    keep = torch.stack([torch.randperm(49, generator=torch.Generator().manual_seed(s))[:17].sort().values
                        for s in range(3)])
    with torch.no_grad():
        plain = general.run_block(1, tokens, keep)
        subset = torch.cat([tokens[:, :1], tokens[:, 1:][torch.arange(3)[:, None], keep]], dim=1)
        torch.testing.assert_close(general.run_block(1, tokens, keep, subset=subset), plain, rtol=0, atol=0)
        own = tokens.clone()
        out = general.run_block(1, own, keep, inplace=True)
        assert out.data_ptr() == own.data_ptr()
        torch.testing.assert_close(out, plain, rtol=0, atol=0)


# --- MoE: dense and gathered ------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_experts, top_k", [(4, 2), (8, 2), (4, 1), (5, 3)])
def test_gathered_and_dense_moe_give_the_same_output(num_experts, top_k):
    torch.manual_seed(num_experts * 10 + top_k)
    experts = SharedExperts(192, 32, 96, num_experts, top_k)
    with torch.no_grad():
        experts.up.weight.normal_(std=0.05)
        experts.up_bias.normal_(std=0.05)
    pair = torch.randn(3, 50, 192)
    top_val, top_idx = torch.randn(3, 50, num_experts).topk(top_k, dim=-1)
    top_w = top_val.softmax(-1)
    weights = torch.zeros(3, 50, num_experts).scatter(-1, top_idx, top_w)
    reference = experts.mix(experts.hidden(pair), weights)
    torch.testing.assert_close(experts.mix_folded(experts.hidden(pair), weights), reference, **TOL)
    torch.testing.assert_close(experts.gathered(pair, top_idx, top_w), reference, **TOL)
    # gradients reach the same parameters with the same values
    grads = []
    for fn in (lambda: experts.mix(experts.hidden(pair), weights), lambda: experts.gathered(pair, top_idx, top_w)):
        experts.zero_grad()
        fn().square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in experts.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_auto_moe_choice_is_dense_where_it_measured_faster():
    experts = SharedExperts(192, 32, 96, 4, 2)
    cpu = torch.device("cpu")
    assert experts.choose(10 * GATHER_MIN_ROWS, cpu, shared=True) == "dense"    # 4 experts, top-2: dense wins
    assert experts.choose(10 * GATHER_MIN_ROWS, cpu) == "dense"
    eight = SharedExperts(192, 32, 96, 8, 2)
    assert eight.choose(10 * GATHER_MIN_ROWS, cpu) == "gathered"               # one stream's pass
    assert eight.choose(10 * GATHER_MIN_ROWS, cpu, shared=True) == "dense"     # dense shares its activations
    many = SharedExperts(192, 32, 96, 16, 2)
    assert many.choose(GATHER_MIN_ROWS - 1, cpu) == "dense"                     # few tokens
    assert many.choose(10 * GATHER_MIN_ROWS, cpu) == "gathered"
    assert many.choose(10 * GATHER_MIN_ROWS, cpu, shared=True) == "gathered"
    assert many.choose(10 * GATHER_MIN_ROWS, torch.device("cuda")) == "dense"   # no host sync on a GPU
    assert SharedExperts(192, 8, 96, 16, 2).choose(10 * GATHER_MIN_ROWS, cpu) == "dense"  # narrow experts
    many.impl = "dense"
    assert many.choose(10 * GATHER_MIN_ROWS, cpu) == "dense"


# --- gradient checkpointing -----------------------------------------------------------------------------------

def test_gradient_checkpointing_gives_the_same_gradients(pair, images):
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    grads = []
    for on in (False, True):
        model = trained_dynamer(pair, keep_ratio=0.5, skip_mode="later-blocks").train()
        for b in (model.runner.general, model.runner.medical):
            b.grad_checkpointing = on
        try:
            torch.nn.functional.cross_entropy(model(images), labels).backward()
        finally:
            for b in (model.runner.general, model.runner.medical):
                b.grad_checkpointing = False
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


# --- linear probing: features once ----------------------------------------------------------------------------

def test_linear_probe_computes_backbone_features_in_the_first_epoch_only(pair):
    from medvtab.perf.suite import Compiler, Context, PerfConfig, measure_linear

    cfg = PerfConfig.for_profile("cpu", quick=True, linear_epochs=3)
    general, medical = pair
    calls = []
    handle = general.model.patch_embed.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        result = measure_linear(Context(cfg, torch.device("cpu"), general, medical, 28, Compiler(False)))
    finally:
        handle.remove()
    assert len(result["epoch_seconds"]) == 3 and result["speedup"] > 0
    # every train and validation image went through the backbone exactly once, all in the first epoch
    assert sum(calls) == result["train_images"] + result["val_images"]


# --- timing -----------------------------------------------------------------------------------------------------

def test_interleaved_rounds_rotate_exclude_warmup_and_pair_ratios():
    order, clock = [], [0.0]
    cost = {"a": 1.0, "b": 2.0, "c": 4.0}

    def case(name):
        def run():
            order.append(name)
            clock[0] += cost[name]
        return run

    t = interleaved({n: case(n) for n in cost}, rounds=3, warmup=2, settle=False, clock=lambda: clock[0])
    assert order[:6] == ["a", "b", "c"] * 2                       # warm-up rounds, untimed
    assert order[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # each round starts one case later
    assert t.times == {"a": [1.0] * 3, "b": [2.0] * 3, "c": [4.0] * 3}
    assert t.ratio("c", "a")["median"] == 4.0 and t.ratio("c", "a")["iqr"] == 0.0
    assert quartiles([1, 2, 3, 4, 5]) == (2, 3, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: checks that DynaMer's routing never "
                                                          "synchronises with the host (torch.cuda.set_sync_debug_mode)")
@pytest.mark.parametrize("skip_mode", ["adapter", "later-blocks", "block"])
def test_routing_does_not_synchronise_with_the_host_on_a_gpu(pair, images, skip_mode):  # pragma: no cover - GPU
    model = trained_dynamer(pair, keep_ratio=0.5, skip_mode=skip_mode).cuda().eval()
    x = images.cuda()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        model(x)  # warm-up: lazy initialisation may synchronise
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")


# --- the ViT-B pair: random weights in the real layouts -------------------------------------------------------

def test_random_layouts_and_the_vitb_flop_ratios():
    """FLOP counts are deterministic: on the paper's ViT-B pair DynaMer adds about a tenth to both backbones and
    block skipping removes most of the work, even with the first block on every token (``later-blocks``), unlike on
    the tiny pair (4 blocks)."""
    from medvtab.errors import MedvtabError
    from medvtab.perf.suite import perf_backbone, vitb_flops

    backbone = perf_backbone("random:dinov2-vitb14", torch.device("cpu"))
    assert backbone.grid == (14, 14) and backbone.width == 768 and backbone.random_init
    with pytest.raises(MedvtabError, match="random:lvmmed-vitb"):
        perf_backbone("random:resnet50", torch.device("cpu"))
    ratios = vitb_flops()["ratios"]
    assert ratios["both_over_one"] == pytest.approx(2.0, abs=0.01)
    assert 1.05 < ratios["dynamer_over_both"] < 1.15
    assert ratios["later_blocks_skip_speedup_0.5"] > 1.7 and ratios["later_blocks_skip_speedup_0.3"] > 2.5
    assert ratios["block_skip_speedup_0.5"] > ratios["later_blocks_skip_speedup_0.5"]


@pytest.mark.slow
def test_the_random_vitb_pair_is_timed_on_this_device():
    from medvtab.perf.suite import Compiler, Context, PerfConfig, measure_vitb

    cfg = PerfConfig.for_profile("cpu", quick=True, vitb_batch=1, vitb_rounds=1, threads=1)
    general = load_backbone("tiny-general")
    out = measure_vitb(Context(cfg, torch.device("cpu"), general, general, 28, Compiler(False), clock="cpu"))
    assert set(out["seconds_per_batch"]) == {"both", "keep:1.0", "later-blocks:0.5", "later-blocks:0.3",
                                             "block:0.5", "block:0.3"}
    assert out["dynamer_over_both"]["median"] > 0 and out["block_skip_speedup_0.3"]["median"] > 0
    assert out["later_blocks_skip_speedup_0.3"]["median"] > 0
