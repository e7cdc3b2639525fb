"""``medvtab pretrain``: pre-train a tiny expert and write its weights and model card."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from medvtab.cli.common import loss_progress, note


def pretrain(
    data: Path = typer.Option(..., help="A MedMNIST-style .npz: 'train_images', 'train_labels' (optional 'test_*', "
                                        "else 20 % of train is held out; optional 'class_names')."),
    out: Path = typer.Option(..., help="New .safetensors file for the backbone weights; the model card is written "
                                       "next to it (.json and .md)."),
    variant: str = typer.Option(..., help="tiny-general, tiny-medical or tiny-radiology (64 px; load the result as "
                                          "VARIANT@OUT)."),
    epochs: int = typer.Option(5, min=1),
    seed: int = typer.Option(0),
    batch_size: int = typer.Option(128, min=1),
    lr: float = typer.Option(1e-3, min=0.0, help="Peak AdamW learning rate (warm-up, then cosine to zero)."),
    mixup: float = typer.Option(0.0, min=0.0, help="MixUp Beta alpha; 0 = off."),
    cutmix: float = typer.Option(0.0, min=0.0, help="CutMix Beta alpha; 0 = off (with --mixup: one of the two "
                                                    "per batch)."),
    drop_path: float = typer.Option(0.0, min=0.0, max=0.9, help="Stochastic depth rate while training; 0 = off."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Random horizontal flips (off for radiology, where left "
                                                             "and right matter)."),
):
    """Pre-train a tiny expert (supervised, on the data set's labels), then linear-probe it against random init;
    writes the weights and a model card, prints the card's summary (as JSON)."""
    # imported here, not at the top: keeps CLI start-up fast
    from medvtab.engine.pretrain import pretrain as run_pretrain

    with loss_progress(f"pretrain {variant} on {data.stem}") as on_step:
        card = run_pretrain(data, out, variant, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr,
                            mixup=mixup, cutmix=cutmix, drop_path=drop_path, hflip=flip, on_step=on_step,
                            on_note=note)
    keys = ("variant", "file", "epochs", "seed", "batch_size", "lr", "train_seconds", "total_seconds",
            "linear_probe")
    print(json.dumps({"out": str(out), **{k: card[k] for k in keys}}, indent=2))
