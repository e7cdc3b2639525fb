"""``medvtab train``, ``predict``, ``inspect`` and ``methods``: one run, its predictions, and what the backbones and
methods look like."""
from __future__ import annotations

import json
import shlex
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from medvtab.cli.common import epoch_lines, loss_progress, note, parse_key_values
from medvtab.errors import MedvtabError


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def interrupted(out: Path) -> str:
    """One line on what an interrupted run kept, and the exact command that goes on from there."""
    from medvtab.engine import rundir

    if (out / rundir.CHECKPOINT).is_file() and not rundir.is_finished(out):
        args = ["--resume" if a == "--out" else a.replace("--out=", "--resume=", 1) for a in sys.argv[1:]]
        return (f"interrupted: the last finished epoch is kept in {out / rundir.CHECKPOINT}; continue with: medvtab "
                + " ".join(shlex.quote(a) for a in args))
    if rundir.is_unstarted(out):
        return (f"interrupted before the first epoch ended: nothing to resume; the same command starts again in "
                f"{out}")
    return "interrupted"


def train(
    task: str = typer.Option(..., help="Bundled task name, a registered real set under --data-root (retinamnist, "
                                       "pneumoniamnist, breastmnist, pbc, kermany-cxr), a .npz (MedMNIST-style "
                                       "splits, or pooled images, labels and optional patient_ids), or an "
                                       "ImageFolder directory."),
    method: str = typer.Option("dynamer", help="Tuning method (see docs/methods.md, or `medvtab methods`)."),
    general: str = typer.Option("tiny-general", help="General-domain backbone spec."),
    medical: str = typer.Option("tiny-medical", help="Medical-domain backbone spec."),
    out: Optional[Path] = typer.Option(None, help="New run directory (with --resume: that directory)."),
    epochs: int = typer.Option(10, min=1),
    batch_size: int = typer.Option(64, min=1),
    lr: Optional[float] = typer.Option(None, min=0.0, help="Learning rate (default: the method's, 1e-4 for most)."),
    train_size: Optional[int] = typer.Option(None, min=1, help="Subsample the train split (stratified)."),
    seed: int = typer.Option(0),
    keep_ratio: Optional[float] = typer.Option(None, help="DynaMer: fraction of patch tokens routed (0, 1]."),
    skip_mode: Optional[str] = typer.Option(None, help="DynaMer: 'adapter' (eq. 4), 'later-blocks' or 'block'."),
    backbone: Optional[str] = typer.Option(None, help="Single-backbone methods: adapt 'general' or 'medical'."),
    set_: List[str] = typer.Option([], "--set", help="Method option KEY=VALUE (repeatable)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    patience: int = typer.Option(5, min=1, help="Early stopping patience in epochs."),
    protocol: str = typer.Option("standard", help="Evaluation protocol: standard, vtab1k (800 train + 200 val), "
                                                  "fewshot (--train-fraction or --shots) or patient-ood "
                                                  "(--seen, --unseen)."),
    train_fraction: Optional[float] = typer.Option(None, help="fewshot: keep this fraction (0, 1] of each class's "
                                                              "train images (at least 1)."),
    shots: Optional[int] = typer.Option(None, help="fewshot: exactly this many train images per class."),
    seen: Optional[int] = typer.Option(None, help="patient-ood: patients whose images are split 70/10/20 into "
                                                  "train/val/seen test."),
    unseen: Optional[int] = typer.Option(None, help="patient-ood: patients held out entirely (the unseen test)."),
    data_root: Optional[Path] = typer.Option(None, help="Folder of the real sets for registered task names "
                                                        "(default: $MEDVTAB_DATA, else shared/data beside the "
                                                        "project)."),
    no_check: bool = typer.Option(False, "--no-check", help="Skip the data check that runs before training."),
    dedupe: bool = typer.Option(False, "--dedupe", help="Drop validation and test images identical to an image of "
                                                        "a split fitted on or selected with (train; train and val "
                                                        "for test); counts per split go to config.json and "
                                                        "metrics.json."),
    devices: int = typer.Option(1, min=1, help="Processes on this machine (DDP via Lightning Fabric: GPUs with "
                                               "--device cuda, else CPU processes on gloo). Under torchrun the "
                                               "launcher's layout is used."),
    num_nodes: int = typer.Option(1, min=1, help="Machines (with --devices each); see docs/scale-out.md."),
    tensorboard: Optional[Path] = typer.Option(None, help="TensorBoard log folder (events in FOLDER/<run name>)."),
    mlflow: Optional[str] = typer.Option(None, "--mlflow", help="MLflow tracking URI (a server, or a local "
                                                                "folder / file: URI) to log the run to."),
    resume: Optional[Path] = typer.Option(None, help="Continue the unfinished run in this directory from its last "
                                                     "epoch checkpoint (give the run's options again)."),
    skip_nonfinite: int = typer.Option(0, min=0, help="Skip up to N batches whose loss is NaN or infinite "
                                                      "(counted in metrics.json) instead of stopping."),
    eval_batch_size: int = typer.Option(256, min=1, help="Batch size of the validation and test passes (and of "
                                                         "the feature pass of feature-caching methods)."),
    auto_batch: bool = typer.Option(False, "--auto-batch", help="On CUDA out of memory, halve the batch size and go "
                                                                "on (the epoch starts again; each reduction is "
                                                                "recorded in metrics.json) instead of stopping."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the model for training and evaluation "
                                                           "(the first epoch pays for compiling); runs eagerly "
                                                           "where compiling fails, the reason recorded in "
                                                           "metrics.json."),
    grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing", help="Recompute the backbone blocks in "
                                                                                "the backward pass instead of "
                                                                                "keeping their activations (less "
                                                                                "memory, about one more forward "
                                                                                "of compute, same results)."),
    num_workers: int = typer.Option(0, min=0, help="DataLoader worker processes that read and shift the images "
                                                   "(0: in the training process); results do not depend on it."),
):
    """Train a method on a task and write metrics, config, adapter weights, a log and the splits to --out."""
    # imported here, not at the top: keeps CLI start-up fast
    from medvtab.engine.loop import TrainConfig
    from medvtab.engine.run import train_run

    options = parse_key_values(set_)
    if keep_ratio is not None:
        options["keep_ratio"] = keep_ratio
    if skip_mode is not None:
        options["skip_mode"] = skip_mode
    if backbone is not None:
        options["backbone"] = backbone
    if out is None and resume is None:
        raise MedvtabError("option '--out': required (a new run directory), or --resume DIR")
    if out is not None and resume is not None and out.resolve() != resume.resolve():
        raise MedvtabError(f"options '--out' and '--resume': a run resumes in its own directory ({resume}), "
                           f"got --out {out}")
    out = out if out is not None else resume
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, patience=patience,
                      devices=devices, num_nodes=num_nodes, skip_nonfinite=skip_nonfinite,
                      eval_batch_size=eval_batch_size, auto_batch=auto_batch, compile=compile_,
                      grad_checkpointing=grad_checkpointing, num_workers=num_workers)
    signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's SIGTERM stops the run as Ctrl-C does
    try:
        with loss_progress(f"{method} on {Path(task).stem}") as on_step:
            metrics = train_run(task, method, general, medical, out, cfg, options, train_size, on_step,
                                on_note=note, protocol=protocol, train_fraction=train_fraction, shots=shots,
                                seen=seen, unseen=unseen, data_root=data_root, run_check=not no_check,
                                tensorboard=tensorboard, mlflow_uri=mlflow, resume=resume is not None,
                                on_epoch=epoch_lines(epochs), dedupe=dedupe)
    except KeyboardInterrupt:
        print(interrupted(out), file=sys.stderr, flush=True)
        raise typer.Exit(130) from None
    if metrics is None:  # another process of a multi-process run: rank 0 reports
        return
    keys = ("task", "task_type", "method", "seed", "protocol", "accuracy", "balanced_accuracy", "macro_f1", "auroc",
            "mean_ap", "exact_match", "per_label_auroc",
            "majority_rate", "trainable_params", "params_ratio", "eval_images_per_second", "train_seconds",
            "split_sizes", "split_patients", "seen", "unseen", "processes", "skipped_nonfinite_batches",
            "batch_size", "batch_size_reductions")
    print(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=2))


def predict(
    run: Path = typer.Option(..., help="A run directory written by `medvtab train`."),
    images: List[Path] = typer.Argument(..., help="Image files (PNG, JPEG, ...)."),
    allow_download: bool = typer.Option(False, "--allow-download",
                                        help="Let a backbone of the run (a timm:NAME spec) download its weights "
                                             "from the hub; without it, loading a run never uses the network."),
):
    """Print class probabilities for each image, one JSON object per line (multi-label: per-label
    probabilities, and every label at or above 0.5 as the prediction)."""
    # imported here, not at the top: keeps CLI start-up fast
    import numpy as np
    import torch

    from medvtab.data.images import read_image
    from medvtab.engine.evaluate import to_probs
    from medvtab.engine.metrics import THRESHOLD
    from medvtab.engine.run import load_run

    model, config, class_names = load_run(run, allow_download=allow_download)
    size = max(b["input_size"] for b in config["backbones"])
    for path in images:
        arr = read_image(path, size)
        x = torch.from_numpy(np.array(arr)).permute(2, 0, 1).unsqueeze(0)  # a writable copy
        multi_label = config.get("task_type") == "multi-label"
        with torch.inference_mode():
            probs = to_probs(model(x).float(), multi_label)[0].tolist()
        if multi_label:  # every label at or above the threshold
            prediction = [c for c, p in zip(class_names, probs) if p >= THRESHOLD]
        else:
            prediction = class_names[max(range(len(probs)), key=probs.__getitem__)]
        print(json.dumps({"image": str(path), "prediction": prediction,
                          "probabilities": {c: round(p, 6) for c, p in zip(class_names, probs)}}))


def inspect(
    general: str = typer.Option(..., help="General-domain backbone spec."),
    medical: str = typer.Option(..., help="Medical-domain backbone spec."),
):
    """Print both backbones' input size, patch grid, tokens, width, depth and parameters, and whether they
    align (as JSON)."""
    # imported here, not at the top: keeps CLI start-up fast
    from medvtab.backbones import check_alignment, load_backbone

    infos = {name: load_backbone(spec).info for name, spec in (("general", general), ("medical", medical))}
    alignment = check_alignment(infos["general"], infos["medical"])
    report = {
        name: {"spec": i.spec, "architecture": i.architecture, "input_size": i.input_size,
               "patch_size": i.patch_size, "grid": f"{i.grid[0]}x{i.grid[1]}", "tokens": i.num_tokens,
               "patch_tokens": i.num_patches, "has_cls": i.has_cls, "width": i.width, "depth": i.depth,
               "params": i.params, "random_init": i.random_init, "pretrained_on": list(i.pretrained_on)}
        for name, i in infos.items()
    }
    report["aligned"] = alignment.aligned
    report["reason"] = alignment.reason
    report["merged_tokens_per_stream"] = alignment.merged_tokens
    print(json.dumps(report, indent=2))


def methods(
    general: str = typer.Option("tiny-general", help="General-domain backbone spec."),
    medical: str = typer.Option("tiny-medical", help="Medical-domain backbone spec."),
    num_classes: int = typer.Option(2, min=2, help="Head size used for the parameter counts."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """List every method with its family, source, trainable parameters and params_ratio on these backbones."""
    # imported here, not at the top: keeps CLI start-up fast
    from rich.table import Table

    from medvtab.backbones import load_backbone
    from medvtab.methods import (
        build_model,
        get_method,
        make_config,
        method_names,
        parameter_counts,
        resolve_backbone_specs,
    )

    loaded = {}
    rows = {}
    for name in method_names():
        spec = get_method(name)
        config = make_config(name, {})
        specs = resolve_backbone_specs(name, config, general, medical)
        backbones = [loaded.setdefault(s, load_backbone(s)) for s in specs]
        model = build_model(name, config, backbones[0], backbones[1] if len(backbones) > 1 else None, num_classes)
        rows[name] = {"family": spec.family, "source": spec.source, "backbones": specs,
                      "default_lr": spec.default_lr, **parameter_counts(model, backbones)}
        del model
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"methods on {general} + {medical}")
    for col in ("method", "family", "trainable", "params_ratio", "source"):
        table.add_column(col)
    for name, r in rows.items():
        table.add_row(name, r["family"], f"{r['trainable_params']:,}", f"{r['params_ratio']:.3f}X", r["source"])
    Console().print(table)
