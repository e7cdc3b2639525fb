"""Total Params of every sweep point of the scaling study (docs/scaling.md): the mini-scaling suite's sizes on the
tiny pair and configs/vitb-scaling.example.yaml's on the DINOv2 ViT-B/14 + LVM-Med ViT-B pair (random weights in
the real checkpoint layouts, as benchmarks/params_table.py: counts do not depend on values), both sets of sizes on
both pairs, 2-class heads. tests/bench/test_scaling_suite.py pins the same counts against their closed form.

    python benchmarks/scaling_params.py
"""
from __future__ import annotations

from pathlib import Path

from params_table import random_vitb_pair  # this folder's sibling benchmark

from medvtab.backbones import load_backbone
from medvtab.bench.grid import expand_grid, load_grid_file
from medvtab.bench.suites import build_suite
from medvtab.methods import build_model, make_config, parameter_counts, resolve_backbone_specs

SIZE = {"vpt-deep": "num_prompts", "adapter-general": "bottleneck", "dynamer": "bottleneck"}
VITB_GRID = Path(__file__).resolve().parents[1] / "configs" / "vitb-scaling.example.yaml"


def sizes(specs) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for s in specs:
        size = make_config(s.method, s.options).model_dump()[SIZE[s.method]]
        if size not in out.setdefault(s.method, []):
            out[s.method].append(size)
    return out


def ratios(general: str, medical: str, points: dict[str, list[int]]) -> dict[tuple[str, int], dict]:
    loaded, out = {}, {}
    for method, values in points.items():
        for size in values:
            cfg = make_config(method, {SIZE[method]: size})
            specs = resolve_backbone_specs(method, cfg, general, medical)
            for spec in specs:
                if spec not in loaded:
                    loaded[spec] = load_backbone(spec)
            backbones = [loaded[s] for s in specs]
            model = build_model(method, cfg, backbones[0], backbones[1] if len(backbones) > 1 else None, 2)
            out[(method, size)] = parameter_counts(model, backbones)
            del model
    return out


def main() -> None:
    tiny_points, vitb_points = sizes(expand_grid(build_suite("mini-scaling"))), sizes(expand_grid(
        load_grid_file(VITB_GRID)))
    both = {m: sorted(set(tiny_points[m]) | set(vitb_points[m])) for m in tiny_points}
    tiny = ratios("tiny-general", "tiny-medical", both)
    with random_vitb_pair() as (general, medical):
        vitb = ratios(general, medical, both)
    print("| family | size | in | trainable (tiny pair) | Total Params (tiny) | trainable (ViT-B pair) "
          "| Total Params (ViT-B) |")
    print("|---|---|---|---|---|---|---|")
    for method, values in both.items():
        for size in values:
            where = " + ".join(n for n, pts in (("mini-scaling", tiny_points), ("ViT-B grid", vitb_points))
                               if size in pts[method])
            t, v = tiny[(method, size)], vitb[(method, size)]
            print(f"| `{method}` | {SIZE[method]}={size} | {where} | {t['trainable_params']:,} | "
                  f"{t['params_ratio']:.3f}X | {v['trainable_params']:,} | {v['params_ratio']:.3f}X |")


if __name__ == "__main__":
    main()
