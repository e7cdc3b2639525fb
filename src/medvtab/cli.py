"""The ``medvtab`` command line: train, predict, inspect."""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from medvtab.errors import MedvtabError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Adapt general + medical vision foundation models to medical imaging tasks.")
err_console = Console(stderr=True)


def note(message: str) -> None:
    """A note or warning on stderr, one unwrapped line."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def loss_progress(description: str):
    """A progress bar over training steps (on a terminal only); yields ``on_step(step, total, loss)``."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[loss]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                  disable=not err_console.is_terminal) as progress:
        bar = progress.add_task(description, total=None, loss="")

        def on_step(step, total, loss):
            progress.update(bar, completed=step, total=total, loss=f"loss {loss:.4f}")
        yield on_step


def _parse_sets(pairs: list[str]) -> dict:
    """``key=value`` method options; values parse as JSON (numbers, true/false) or stay strings."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MedvtabError(f"option '--set': expected KEY=VALUE, got '{pair}'")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


@app.command()
def train(
    task: str = typer.Option(..., help="Bundled task name, a registered real set under --data-root (retinamnist, "
                                       "pneumoniamnist, breastmnist, pbc, kermany-cxr), a .npz (MedMNIST-style "
                                       "splits, or pooled images, labels and optional patient_ids), or an "
                                       "ImageFolder directory."),
    method: str = typer.Option("dynamer", help="Tuning method (see the README's method table)."),
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
    devices: int = typer.Option(1, min=1, help="Processes on this machine (DDP via Lightning Fabric: GPUs with "
                                               "--device cuda, else CPU processes on gloo). Under torchrun the "
                                               "launcher's layout is used."),
    num_nodes: int = typer.Option(1, min=1, help="Machines (with --devices each); see the README's scale-out."),
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
):
    """Train a method on a task and write metrics, config, adapter weights, a log and the splits to --out."""
    from medvtab.engine.loop import TrainConfig
    from medvtab.engine.run import train_run

    options = _parse_sets(set_)
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
                      grad_checkpointing=grad_checkpointing)
    with loss_progress(f"{method} on {Path(task).stem}") as on_step:
        metrics = train_run(task, method, general, medical, out, cfg, options, train_size, on_step, on_note=note,
                            protocol=protocol, train_fraction=train_fraction, shots=shots, seen=seen,
                            unseen=unseen, data_root=data_root, run_check=not no_check,
                            tensorboard=tensorboard, mlflow_uri=mlflow, resume=resume is not None)
    if metrics is None:  # another process of a multi-process run: rank 0 reports
        return
    keys = ("task", "task_type", "method", "seed", "protocol", "accuracy", "balanced_accuracy", "macro_f1", "auroc",
            "mean_ap", "exact_match", "per_label_auroc",
            "majority_rate", "trainable_params", "params_ratio", "eval_images_per_second", "train_seconds",
            "split_sizes", "split_patients", "seen", "unseen", "processes", "skipped_nonfinite_batches",
            "batch_size", "batch_size_reductions")
    print(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=2))


@app.command()
def pretrain(
    data: Path = typer.Option(..., help="A MedMNIST-style .npz: 'train_images', 'train_labels' (optional 'test_*', "
                                        "else 20 % of train is held out; optional 'class_names')."),
    out: Path = typer.Option(..., help="New .safetensors file for the backbone weights; the model card is written "
                                       "next to it (.json and .md)."),
    variant: str = typer.Option(..., help="tiny-general or tiny-medical (load the result as VARIANT@OUT)."),
    epochs: int = typer.Option(5, min=1),
    seed: int = typer.Option(0),
    batch_size: int = typer.Option(128, min=1),
    lr: float = typer.Option(1e-3, min=0.0, help="Peak AdamW learning rate (warm-up, then cosine to zero)."),
):
    """Pre-train a tiny expert (supervised, on the data set's labels), then linear-probe it against random init;
    writes the weights and a model card, prints the card's summary (as JSON)."""
    from medvtab.engine.pretrain import pretrain as run_pretrain

    with loss_progress(f"pretrain {variant} on {data.stem}") as on_step:
        card = run_pretrain(data, out, variant, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr,
                            on_step=on_step, on_note=note)
    keys = ("variant", "file", "epochs", "seed", "batch_size", "lr", "train_seconds", "total_seconds",
            "linear_probe")
    print(json.dumps({"out": str(out), **{k: card[k] for k in keys}}, indent=2))


@app.command()
def predict(
    run: Path = typer.Option(..., help="A run directory written by `medvtab train`."),
    images: List[Path] = typer.Argument(..., help="Image files (PNG, JPEG, ...)."),
):
    """Print class probabilities for each image, one JSON object per line (multi-label: per-label
    probabilities, and every label at or above 0.5 as the prediction)."""
    import numpy as np
    import torch

    from medvtab.data.images import read_image
    from medvtab.engine.evaluate import to_probs
    from medvtab.engine.metrics import THRESHOLD
    from medvtab.engine.run import load_run

    model, config, class_names = load_run(run)
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


@app.command()
def inspect(
    general: str = typer.Option(..., help="General-domain backbone spec."),
    medical: str = typer.Option(..., help="Medical-domain backbone spec."),
):
    """Print both backbones' input size, patch grid, tokens, width, depth and parameters, and whether they
    align (as JSON)."""
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


@app.command()
def methods(
    general: str = typer.Option("tiny-general", help="General-domain backbone spec."),
    medical: str = typer.Option("tiny-medical", help="Medical-domain backbone spec."),
    num_classes: int = typer.Option(2, min=2, help="Head size used for the parameter counts."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
):
    """List every method with its family, source, trainable parameters and params_ratio on these backbones."""
    from rich.table import Table

    from medvtab.backbones import load_backbone
    from medvtab.methods import build_model, get_method, make_config, method_names, parameter_counts
    from medvtab.methods import resolve_backbone_specs

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


@app.command()
def bench(
    out: Path = typer.Option(..., help="The results store: DIR/bench.json (the grid) and DIR/runs/<run_id>/ (one "
                                       "run directory per finished run). Rerun with the same DIR to resume."),
    suite: Optional[str] = typer.Option(None, help="A built-in grid: mini (every method on retinamnist, "
                                                   "pneumoniamnist, breastmnist, plus patient-OOD and few-shot "
                                                   "groups) or mini-ablations (DynaMer's ablation grids); "
                                                   "mini,mini-ablations runs both into one store."),
    config: Optional[Path] = typer.Option(None, help="A YAML grid file (see configs/*.yaml) instead of --suite."),
    methods: Optional[str] = typer.Option(None, help="Only these methods, comma-separated."),
    seeds: Optional[int] = typer.Option(None, min=1, help="Seeds 0..N-1 for every group (default: the grid's; "
                                                          "the mini suites use 1)."),
    quick: bool = typer.Option(False, "--quick", help="The built-in suite's quick profile (a few minutes on a "
                                                      "2-core CPU)."),
    executor: str = typer.Option("serial", help="serial (in this process) or ray (one Ray task per run)."),
    address: Optional[str] = typer.Option(None, help="ray: the cluster to connect to (default: a private local "
                                                     "Ray instance)."),
    workers: Optional[int] = typer.Option(None, min=1, help="ray: runs in flight at once (default: the local CPU "
                                                            "count, or the cluster's CPUs/GPUs)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N (default: the grid's device, else cpu)."),
    threads: Optional[int] = typer.Option(None, min=1, help="torch CPU threads per run (default 1: many small runs "
                                                            "scale across Ray workers, not threads)."),
    data_root: Optional[Path] = typer.Option(None, help="Folder of the real sets for registered task names "
                                                        "(default: $MEDVTAB_DATA, else shared/data beside the "
                                                        "project)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the grid (runs per group, which are finished) "
                                                          "and run nothing."),
):
    """Run a grid of (task, method, seed, config) runs into a resumable results store; finished runs are never
    recomputed, failed runs are recorded in DIR/failures/ and retried by the next run of the same command."""
    from medvtab.bench.grid import expand_grid, load_grid_file
    from medvtab.bench.suites import SUITES, build_suite

    if (suite is None) == (config is None):
        raise MedvtabError("give exactly one of --suite (" + ", ".join(SUITES) + ") and --config FILE")
    if quick and suite is None:
        raise MedvtabError("option '--quick': only with --suite (a --config grid sets its own budget)")
    if executor == "serial" and (address is not None or workers is not None):
        raise MedvtabError(f"option '{'--address' if address is not None else '--workers'}': only with "
                           f"--executor ray")
    method_list = [m.strip() for m in methods.split(",") if m.strip()] if methods is not None else None
    if method_list is not None and not method_list:
        raise MedvtabError("option '--methods': no method names given")
    if suite is not None:  # one suite, or several into one store: --suite mini,mini-ablations
        names = [n.strip() for n in suite.split(",") if n.strip()]
        grids = [build_suite(n, quick=quick) for n in names]
        specs = [spec for n, g in zip(names, grids) for spec in expand_grid(g, methods=method_list, seeds=seeds,
                                                                            where=f"suite '{n}'", allow_empty=True)]
        if not specs:
            raise MedvtabError(f"option '--methods': no run of suite '{suite}' uses any of {', '.join(method_list)}")
        grid, name = grids[0], "+".join(names)
    else:
        grid = load_grid_file(config)
        specs = expand_grid(grid, methods=method_list, seeds=seeds, where=str(config))
        name = grid.name
    device = device or grid.device or "cpu"
    root = data_root if data_root is not None else grid.data_root
    if dry_run:
        from medvtab.bench.runner import print_dry_run
        print_dry_run(out, specs, data_root=root)
        return
    from medvtab.bench.runner import run_grid

    info = {"profile": "quick" if quick else "default", "config": None if config is None else str(config),
            "methods": method_list, "seeds": seeds}
    summary = run_grid(out, specs, suite=name, device=device, data_root=root, executor=executor, address=address,
                       workers=workers, threads=threads, info=info)
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def report(
    bench_dir: Path = typer.Argument(..., help="A `medvtab bench --out` directory (bench.json + runs/)."),
    out: Optional[Path] = typer.Option(None, help="The HTML report to write (default DIR/report.html); the markdown "
                                                  "(.md) and figures/ go beside it."),
    attention: bool = typer.Option(True, "--attention/--no-attention",
                                   help="Draw attention maps (rebuilds one DynaMer model from its run directory)."),
):
    """Write the bench results as the papers' tables and figures: report.md, a self-contained report.html and
    PNGs in figures/ (missing and failed runs listed)."""
    from medvtab.bench.report.write import write_report

    result = write_report(bench_dir, out, attention=attention)
    print(json.dumps({"html": str(result.html_path), "markdown": str(result.md_path),
                      "figures": [str(f.path) for f in result.figures().values()]}, indent=2))


@app.command()
def perf(
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON (for machines) instead of tables."),
    general: str = typer.Option("tiny-general", help="General-domain backbone spec, or random:NAME for a real "
                                                     "layout from random weights (random:dinov2-vitb14; on a GPU "
                                                     "with random:lvmmed-vitb: the paper's ViT-B pair)."),
    medical: str = typer.Option("tiny-medical", help="Medical-domain backbone spec, or random:lvmmed-vitb."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N (bf16 autocast and SDPA attention on a GPU; the "
                                           "GPU path has not been run on a GPU yet)."),
    quick: bool = typer.Option(False, "--quick", help="A few seconds: tiny batches, 2 rounds, 3 methods (smoke "
                                                      "tests; the numbers mean little)."),
    rounds: Optional[int] = typer.Option(None, min=1, help="Timed rounds per forward measurement (default: 9 on a "
                                                           "CPU, 20 on a GPU)."),
    batch_sizes: Optional[str] = typer.Option(None, help="Batch sizes of the backbone measurement, comma-separated "
                                                         "(default 1,32,256)."),
    skip_batch_sizes: Optional[str] = typer.Option(None, help="Batch sizes of the keep-ratio table (default 32,256)."),
    train_batch: Optional[int] = typer.Option(None, min=1, help="Batch size of the training steps and the loading "
                                                                "measurement (default 32 on a CPU, 256 on a GPU)."),
    methods: Optional[str] = typer.Option(None, help="Only these methods in the training-step measurement "
                                                     "(comma-separated; DynaMer is always included)."),
    threads: Optional[int] = typer.Option(1, min=1, help="torch CPU threads (default 1: steadier on a shared "
                                                         "machine; ratios are what the CPU targets are about)."),
    compile_: bool = typer.Option(False, "--compile", help="Wrap the timed models in torch.compile (eager where "
                                                           "compiling fails; the reason is recorded). Meant for "
                                                           "GPUs: on a CPU compiling takes minutes."),
    checkpointing: bool = typer.Option(False, "--checkpointing", help="Gradient checkpointing of the backbone "
                                                                      "blocks in the training steps."),
    out: Optional[Path] = typer.Option(None, help="Also write the JSON to this file."),
):
    """Measure forward and training speed, memory, FLOPs, data loading and linear-probe epochs in one process
    (interleaved repetitions, warm-up excluded, medians and interquartile ranges)."""
    from medvtab.perf.report import dumps, print_tables
    from medvtab.perf import PerfConfig, run_perf

    def sizes(text: Optional[str], option: str):
        if text is None:
            return None
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            values = ()
        if not values or min(values) < 1:
            raise MedvtabError(f"option '{option}': expected positive integers separated by commas, got '{text}'")
        return values

    method_list = tuple(m.strip() for m in methods.split(",") if m.strip()) if methods is not None else None
    cfg = PerfConfig.for_profile(device, quick, general=general, medical=medical, rounds=rounds,
                                 batch_sizes=sizes(batch_sizes, "--batch-sizes"),
                                 skip_batch_sizes=sizes(skip_batch_sizes, "--skip-batch-sizes"),
                                 train_batch=train_batch, methods=method_list, threads=threads,
                                 compile=compile_, checkpointing=checkpointing)
    result = run_perf(cfg, on_progress=lambda name: err_console.print(f"perf: {name}", markup=False)
                      if not as_json and err_console.is_terminal else None)
    text = dumps(result)
    if out is not None:
        out.write_text(text + "\n")
    if as_json:
        print(text)
    else:
        print_tables(result)


from medvtab.data.cli import data_app  # noqa: E402 - the sub-apps register after the main app's commands
from medvtab.vqa.cli import vqa_app  # noqa: E402

app.add_typer(data_app, name="data", help="Task registry and data checks.")
app.add_typer(vqa_app, name="vqa", help="MedVQA: vision encoder + Q-Former + LM with LoRA.")


def main() -> None:
    from medvtab.engine.acceleration import keep_freed_memory

    keep_freed_memory()  # every command: CPU forwards without a page fault per activation buffer
    try:
        app(standalone_mode=True)
    except MedvtabError as err:
        err_console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted", markup=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
