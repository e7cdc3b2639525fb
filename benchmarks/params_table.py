"""The parameter table of docs/methods.md: trainable parameters and "Total Params" of every method on the tiny
pair and on the DINOv2 ViT-B/14 + LVM-Med ViT-B pair (random weights in the real checkpoint layouts: parameter
counts do not depend on the values), next to the papers' Total Params column.

    python benchmarks/params_table.py
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import timm
import torch
from safetensors.torch import save_file

# Tables 1-3 of the DynaMer paper (Total Params on ViT-B); LoRA, full and partial are not in its tables.
PAPER = {"linear": "1.01X", "vpt-shallow": "1.01X", "vpt-deep": "1.04X", "gapt": "1.02X", "lspt": "1.05X",
         "adapter-general": "1.17X", "adapter-medical": "1.17X", "mof-adapter": "1.24X", "moe-adapter": "1.34X",
         "gmoe-adapter": "1.35X", "dynamer": "1.21X"}


def methods_json(general: str, medical: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "medvtab.cli", "methods", "--json", "--general", general,
                          "--medical", medical], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@contextlib.contextmanager
def random_vitb_pair() -> Iterator[tuple[str, str]]:
    """Backbone specs of random-weight DINOv2 ViT-B/14 and LVM-Med ViT-B checkpoints in their real file layouts,
    valid inside the block (parameter counts do not depend on the values)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dino = timm.create_model("vit_base_patch14_dinov2", num_classes=0).state_dict()
        save_file({k: v.contiguous() for k, v in dino.items()}, tmp / "dinov2.safetensors")
        sam = timm.create_model("samvit_base_patch16", num_classes=0).state_dict()
        torch.save({k.replace("mlp.fc", "mlp.lin"): v for k, v in sam.items() if not k.startswith("head")},
                   tmp / "lvmmed_vit.pth")
        yield f"dinov2-vitb14@{tmp / 'dinov2.safetensors'}", f"lvmmed-vitb@{tmp / 'lvmmed_vit.pth'}"


def main() -> None:
    with random_vitb_pair() as (general, medical):
        vitb = methods_json(general, medical)
    tiny = methods_json("tiny-general", "tiny-medical")
    print("| method | family | trainable (tiny pair) | Total Params (tiny) | trainable (DINOv2-B + LVM-Med) "
          "| Total Params (ViT-B) | paper |")
    print("|---|---|---|---|---|---|---|")
    for name, row in vitb.items():
        print(f"| `{name}` | {row['family']} | {tiny[name]['trainable_params']:,} | {tiny[name]['params_ratio']:.3f}X "
              f"| {row['trainable_params']:,} | {row['params_ratio']:.3f}X | {PAPER.get(name, '-')} |")


if __name__ == "__main__":
    main()
