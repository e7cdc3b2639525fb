"""The scaling suite (`medvtab bench --suite mini-scaling`) and its ViT-B grid file: every sweep point's Total Params
against the closed form of what its method adds (on the tiny pair at full depth, and on depth-2 ViT-B checkpoints
for the ViT-B grid's sizes, so the ratios docs/scaling.md states for 12-block ViT-B follow from the same formulas),
and every point tuned on its own (`tune_each_point`), the default points sharing the main table's studies."""
from __future__ import annotations

from pathlib import Path

import pytest

from medvtab.backbones import load_backbone
from medvtab.bench.grid import expand_grid, load_grid_file
from medvtab.bench.suites import build_suite
from medvtab.bench.tune import plan_studies, tuning_key, tuning_of
from medvtab.methods import build_model, make_config, parameter_counts, resolve_backbone_specs

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SIZE = {"vpt-deep": "num_prompts", "adapter-general": "bottleneck", "dynamer": "bottleneck"}


def added_params(method: str, size: int, width: int, depth: int, classes: int) -> int:
    """What each family adds to the frozen backbone(s), from the methods' definitions: VPT-deep a (depth, M, D)
    prompt tensor; a Pfeiffer adapter per block, D -> b -> D with biases; DynaMer per block its 4 shared experts on
    the concatenated pair (2D -> 4b down with bias, 4b -> D up, a D-wide bias per expert), the shared 2-layer router
    (hidden D / 24, at least 8) and two width-wide gates (one per stream), and a head on both streams' features.
    Single-stream heads read D features."""
    if method == "vpt-deep":
        return depth * size * width + width * classes + classes
    if method == "adapter-general":
        return depth * (2 * width * size + size + width) + width * classes + classes
    if method == "dynamer":
        experts, hidden = 4, max(8, width // 24)
        layer = (2 * width * experts * size + experts * size) + experts * size * width + experts * width
        layer += width * hidden + hidden + hidden * experts + experts  # the adaptation router
        layer += 2 * (width * width + width)  # the gates
        return depth * layer + 2 * width * classes + classes
    raise ValueError(method)


def counts(method: str, options: dict, general: str, medical: str, classes: int, loaded: dict, **load) -> dict:
    cfg = make_config(method, options)
    specs = resolve_backbone_specs(method, cfg, general, medical)
    for spec in specs:
        if spec not in loaded:
            loaded[spec] = load_backbone(spec, **load)
    backbones = [loaded[s] for s in specs]
    model = build_model(method, cfg, backbones[0], backbones[1] if len(backbones) > 1 else None, classes)
    return {**parameter_counts(model, backbones), "one": backbones[0].info.params, "width": backbones[0].width,
            "depth": backbones[0].depth}


def points(specs) -> list[tuple[str, int]]:
    out = []
    for s in specs:
        size = make_config(s.method, s.options).model_dump()[SIZE[s.method]]
        if (s.method, size) not in out:
            out.append((s.method, size))
    return out


def test_every_point_of_the_suite_against_the_closed_form():
    specs = expand_grid(build_suite("mini-scaling"))
    assert {s.group for s in specs} == {"scaling-vpt-deep", "scaling-adapter-general", "scaling-dynamer"}
    assert {s.task for s in specs} == {"retinamnist", "pneumoniamnist", "breastmnist"}
    assert {s.seed for s in specs} == {0, 1, 2} and len(specs) == 3 * 3 * 4 * 3
    loaded = {}
    ratios = {}
    for method, size in points(specs):
        for classes in (2, 5):  # pneumoniamnist and breastmnist; retinamnist
            c = counts(method, {SIZE[method]: size}, "tiny-general", "tiny-medical", classes, loaded)
            added = added_params(method, size, c["width"], c["depth"], classes)
            assert c["trainable_params"] == added, (method, size)
            assert c["params_ratio"] == round((c["one"] + added) / c["one"], 4)
            if classes == 2:
                ratios.setdefault(method, []).append(c["params_ratio"])
    assert ratios == {"vpt-deep": [1.0013, 1.0088, 1.0424, 1.1684],  # as the suite's file states them
                      "adapter-general": [1.0114, 1.0418, 1.1634, 1.3897],
                      "dynamer": [1.1945, 1.2552, 1.3361, 1.417]}


def test_vitb_grid_points_against_the_closed_form(vitb_checkpoints):
    grid = load_grid_file(CONFIGS / "vitb-scaling.example.yaml")
    specs = expand_grid(grid)
    assert grid.device == "cuda" and {s.general.split("@")[0] for s in specs} == {"dinov2-vitb14"}
    general, medical = f"dinov2-vitb14@{vitb_checkpoints['dinov2']}", f"lvmmed-vitb@{vitb_checkpoints['lvmmed']}"
    loaded = {}
    for method, size in points(specs):
        c = counts(method, {SIZE[method]: size}, general, medical, 2, loaded, depth=2)
        assert c["width"] == 768 and c["depth"] == 2
        assert c["trainable_params"] == added_params(method, size, 768, 2, 2), (method, size)


def test_each_point_is_tuned_on_its_own_and_defaults_share_the_main_study(tmp_path):
    grids = [build_suite("mini"), build_suite("mini-scaling")]
    tuning = tuning_of(grids)
    scaling = expand_grid(grids[1])
    studies = plan_studies(tmp_path, scaling, tuning_of(grids[1:]))
    assert len(studies) == 3 * 3 * 4  # task x family x point
    main = [s for s in expand_grid(grids[0]) if s.group == "main"]
    # vpt-deep's 10 prompts are its default; DynaMer's experts, 8 wide by default here, are given explicitly
    assert {s.method for s in scaling if not s.options} == {"vpt-deep"}
    for default in (s for s in scaling if not s.options):
        twin = next(s for s in main if (s.method, s.task, s.seed) == (default.method, default.task, default.seed))
        assert tuning_key(default, tuning.sweeps) == tuning_key(twin, tuning.sweeps)
        assert default.run_id() == twin.run_id()  # one run, shared when both suites run into one store


@pytest.mark.parametrize("quick", [False, True])
def test_quick_profile_keeps_two_seeds(quick):
    specs = expand_grid(build_suite("mini-scaling", quick=quick))
    assert {s.seed for s in specs} == ({0, 1} if quick else {0, 1, 2})
    assert all(s.train["epochs"] == (1 if quick else 3) for s in specs)
