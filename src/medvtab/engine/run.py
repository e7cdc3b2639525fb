"""One training run from task to run directory, and loading a run back.

data (+ protocol) -> backbones + method -> loop -> metrics.json, config.json, adapter.safetensors, log.csv,
predictions.npz, splits.json (the files: :mod:`medvtab.engine.rundir`)
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Callable

import torch

import medvtab
from medvtab.atomic import make_output_dir
from medvtab.backbones import load_backbone
from medvtab.data import Split, TaskData
from medvtab.data.protocols import SPLITS_FILE, check_protocol, load_protocol_task, splits_record
from medvtab.data.check import PROTOCOL_SHARED_PATIENTS, check_task
from medvtab.data.leakage import drop_evaluation_duplicates, leakage_warnings
from medvtab.engine import rundir
from medvtab.engine.distributed import launch
from medvtab.engine.evaluate import evaluate
from medvtab.engine.loop import TrainConfig, fit, rank_count, seed_everything
from medvtab.engine.metrics import classification_metrics
from medvtab.engine.state import load_checkpoint
from medvtab.engine.tracking import Tracker
from medvtab.errors import MedvtabError
from medvtab.methods import (build_model, get_method, make_config, parameter_counts,
                             resolve_backbone_specs)


def prepare(method: str, options: dict, general_spec: str, medical_spec: str | None, *,
            allow_download: bool = True):
    """Validated method config and the backbones the method runs on (only those are loaded)."""
    config = make_config(method, options)
    specs = resolve_backbone_specs(method, config, general_spec, medical_spec)
    return config, [load_backbone(spec, allow_download=allow_download) for spec in specs]


SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")


def summarise_test_set(split: Split, metrics: dict) -> dict:
    """The headline metrics of one test set, with its image and (where known) patient count."""
    return {**{k: metrics[k] for k in SUMMARY_KEYS}, "images": len(split), "patients": split.num_patients}


def train_run(task: str, method: str, general_spec: str, medical_spec: str | None, out: Path,
              train_cfg: TrainConfig, options: dict | None = None, train_size: int | None = None,
              on_step: Callable | None = None, on_note: Callable[[str], None] = print, *,
              protocol: str = "standard", train_fraction: float | None = None, shots: int | None = None,
              seen: int | None = None, unseen: int | None = None, data_root: str | Path | None = None,
              run_check: bool = True, record: dict | None = None, tensorboard: Path | None = None,
              mlflow_uri: str | None = None, resume: bool | str = False,
              on_epoch: Callable[[dict], bool | None] | None = None, test: bool = True,
              dedupe: bool = False) -> dict | None:
    """Everything is validated (options, protocol, backbones, data, alignment) before the run directory exists.

    ``protocol`` and its options: see :mod:`medvtab.data.protocols`. ``data_root``: where registered real sets
    are found (default: ``$MEDVTAB_DATA``, else ``shared/data`` beside the project). ``record``: extra fields
    for config.json (``medvtab bench`` stores the run's spec there, so the directory lands in one step).
    Several processes (``train_cfg.devices`` / ``num_nodes``, or a torchrun launch): see
    :mod:`medvtab.engine.distributed`; only global rank 0 writes the run and gets the metrics, the others None.
    ``tensorboard`` (a log folder: events go to ``tensorboard/<run name>``) and ``mlflow_uri``: optional
    tracking (:mod:`medvtab.engine.tracking`), by rank 0.

    CUDA out of memory stops the run naming the batch size to try, the last epoch checkpoint kept; with
    ``train_cfg.auto_batch`` the batch size is halved and the run goes on, each reduction noted and recorded in
    metrics.json (``batch_size_reductions``, the final ``batch_size`` and ``eval_batch_size``).

    ``train_cfg.compile``: the model's forward is ``torch.compile``-d for training and evaluation, eager where
    that fails; metrics.json and config.json (written again at the end) record ``compile``: ``requested``,
    ``in_effect`` and the ``fallback`` reason. ``train_cfg.grad_checkpointing``: the backbone blocks are
    recomputed in the backward pass (same results, less memory); recorded as ``grad_checkpointing``.

    The run directory holds config.json and splits.json from the start and ``checkpoint.pt`` after every epoch;
    ``resume=True`` continues the unfinished run in ``out`` from its checkpoint (same options required), which
    on CPU ends with the metrics an uninterrupted run has. The result files are written one by one, atomically,
    metrics.json last: a run is finished exactly when its metrics.json exists; the checkpoint is then removed.
    ``resume="auto"`` (for grids, whose runner holds the run's claim): resume where a checkpoint exists, else
    start afresh, clearing what a run killed in its first epoch left.

    ``on_epoch``: called with each epoch's history row; a true return stops the run after that epoch (a tuner
    pruning a trial: metrics.json records ``pruned_at_epoch``). ``test=False`` (a tuning trial): the test split is
    never evaluated; metrics.json holds the validation scores per epoch (``val_scores``), the best
    (``val_score``) and that epoch's validation loss (``val_loss``, the tuner's tie-break) instead of test
    metrics, predictions.npz the validation set only, and no adapter.safetensors is written.

    ``dedupe``: evaluation images identical to an image the run fits on or selects with are dropped before the
    data check (:func:`~medvtab.data.leakage.drop_evaluation_duplicates`); config.json and metrics.json record
    how many per split (``dedupe``), and the split sizes are those after dropping.
    """
    if train_cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise MedvtabError("option '--device': cuda requested but no CUDA device is available")
    if resume == "auto":
        resume = rundir.resume_or_clear(out)
    if resume:
        rundir.check_resumable(out)
    else:
        rundir.check_new_run_dir(out)
    fabric = launch(train_cfg.device, train_cfg.devices, train_cfg.num_nodes)  # None: one process
    if train_cfg.auto_batch and fabric is not None:
        raise MedvtabError("option '--auto-batch': one process only (the processes of a run would have to agree "
                           "on every reduction); give --batch-size instead")
    writer = fabric is None or fabric.global_rank == 0
    if not writer:  # the other processes train in step, silently
        on_step, on_note, on_epoch = None, (lambda message: None), None
    chosen = check_protocol(protocol, train_fraction=train_fraction, shots=shots, seen=seen, unseen=unseen,
                            train_size=train_size)
    if train_cfg.lr is None:
        train_cfg = train_cfg.model_copy(update={"lr": get_method(method).default_lr})
    config, backbones = prepare(method, options or {}, general_spec, medical_spec)
    size = max(b.input_size for b in backbones)
    data: TaskData = load_protocol_task(task, chosen, seed=train_cfg.seed, image_size=size, train_size=train_size,
                                        data_root=data_root)
    dropped = None
    if dedupe:
        data, dropped = drop_evaluation_duplicates(data)
    empty = [name for name, split in (("train", data.train), ("validation", data.val), ("test", data.test),
                                      *data.extra_tests.items()) if len(split) == 0]
    if empty:  # checked even with --no-check: training would end in a crash after its first epoch
        after = " left after --dedupe" if (dropped or {}).get(empty[0]) else ""
        raise MedvtabError(f"{task}: the {empty[0]} split has no images{after}; training and every evaluation need "
                           f"at least one")
    warnings = leakage_warnings(data.name, [(b.spec, b.pretrained_on) for b in backbones])
    if run_check:  # the mistakes that ruin medical results stop a run before it starts (--no-check skips)
        report = check_task(data, allow_shared_patients=PROTOCOL_SHARED_PATIENTS[chosen.name])
        if not report.ok:
            dedupe_helps = any(f.check == "duplicates across splits" and f.level == "error" for f in report.findings)
            raise MedvtabError(f"{report.summary()}; see `medvtab data check {task}`, or pass "
                               + ("--dedupe (drop those evaluation images) or " if dedupe_helps else "") + "--no-check")
        warnings += [f"data check: {w}" for w in report.warnings]
    splits = splits_record(data, chosen, train_cfg.seed)
    seed_everything(train_cfg.seed)  # the trainable parts' initialisation depends on the seed alone
    model = build_model(method, config, backbones[0], backbones[1] if len(backbones) > 1 else None,
                        data.num_classes)
    for b in backbones:
        if b.random_init:
            on_note(f"note: backbone '{b.spec}' is randomly initialised (no pre-trained weights)")
    for note in data.notes:
        on_note(f"note: {note}")
    if dropped is not None:
        lost = [f"{n} {name} image{'s' * (n != 1)}" for name, n in dropped.items() if n]
        on_note(f"note: --dedupe dropped {', '.join(lost)} identical to images of a split fitted on or selected with"
                if lost else "note: --dedupe: no evaluation image is identical to an image fitted on or selected with")
    for warning in warnings:
        on_note(f"warning: {warning}")

    run_config = {
        "medvtab_version": medvtab.__version__, "task": task, "task_source": data.source,
        "task_type": data.task_type, "num_classes": data.num_classes, "class_names": data.class_names,
        "method": method, "method_config": config.model_dump(),
        "general": general_spec, "medical": medical_spec,
        "backbones": [vars(b.info) for b in backbones],
        "train": train_cfg.model_dump(), "train_size": train_size,
        "protocol": chosen.record(), "data_root": None if data_root is None else str(data_root),
        "splits_file": SPLITS_FILE, "notes": data.notes, "dedupe": dropped,
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "platform": platform.platform(), "threads": torch.get_num_threads()},
        **(record or {}),
    }
    checkpoint = out / rundir.CHECKPOINT
    state = load_checkpoint(checkpoint) if resume else None
    tracker = Tracker(None if tensorboard is None else Path(tensorboard) / out.name, mlflow_uri,
                      run_name=out.name) if writer and (tensorboard or mlflow_uri) else None
    if writer:
        make_output_dir(out)
        rundir.write_json(out / rundir.CONFIG, run_config)
        rundir.write_json(out / SPLITS_FILE, splits)
    try:
        result = fit(model, data.train, data.val, train_cfg, on_step=on_step, fabric=fabric,
                     on_epoch=_epoch_hook(tracker, on_epoch), checkpoint=checkpoint, resume=state,
                     fingerprint=run_fingerprint(run_config, len(data.train)), on_note=on_note)
    except BaseException:
        if tracker:
            tracker.abort()
        raise
    device = fabric.device if fabric is not None else torch.device(train_cfg.device)
    batches, epochs_run = result.batches, len(result.history)  # the checkpoint keeps the last epoch until the end

    def test_pass(split: Split, record_stats: bool = False):
        return batches.evaluate(lambda b: evaluate(model, split.images, split.y, b, device, record_stats,
                                                   train_cfg.num_workers), len(split), "test", None, epochs_run)
    if test:
        tested = test_pass(data.test, record_stats=True)
        test_metrics = classification_metrics(data.test.y, tested.probs)
        scores = {**test_metrics, "eval_images_per_second": round(tested.images_per_second, 2),
                  "ms_per_batch": round(tested.ms_per_batch, 3)}
    else:  # a tuning trial: validation only
        val_scores = [row.get("val_auroc", row.get("val_accuracy")) for row in result.history]
        best = result.history[result.best_epoch - 1] if result.best_epoch else result.history[-1]
        scores = {"val_scores": val_scores, "val_score": max(val_scores), "val_loss": best["val_loss"],
                  "pruned_at_epoch": result.stopped_at_epoch}
    metrics = {
        "task": data.name, "task_type": data.task_type, "method": method, "seed": train_cfg.seed,
        "protocol": chosen.name,
        "warnings": warnings, "data_checked": run_check,
        **scores,
        **parameter_counts(model, backbones),
        "batch_size": batches.train, "eval_batch_size": batches.eval,
        "batch_size_reductions": batches.reductions,  # --auto-batch after CUDA out of memory
        "train_seconds": round(result.train_seconds, 3),
        "processes": rank_count(fabric), "skipped_nonfinite_batches": result.skipped_batches,
        "epochs_run": len(result.history), "best_epoch": result.best_epoch,
        "split_sizes": data.sizes(), **({"dedupe": dropped} if dedupe else {}),
        **({"split_patients": data.patient_counts()} if data.patient_counts() is not None else {}),
        "routing": model.routing_stats(),
        "compile": result.compile_record(), "grad_checkpointing": train_cfg.grad_checkpointing,
    }
    predictions = {"val": (result.best_val_probs, data.val.y)}
    if test:
        predictions["test"] = (tested.probs, data.test.y)
    if test and data.extra_tests:  # patient-ood: the usual keys are the seen test's; each test set in full too
        metrics["seen"] = summarise_test_set(data.test, test_metrics)
        for name, split in data.extra_tests.items():
            extra = test_pass(split)
            metrics[name] = summarise_test_set(split, classification_metrics(split.y, extra.probs))
            predictions[name] = (extra.probs, split.y)
        metrics["compile"] = result.compile_record()  # as of the last pass
    if not writer:
        return None
    if train_cfg.compile:  # whether it took effect is known now
        rundir.write_json(out / rundir.CONFIG, {**run_config, "compile": metrics["compile"]})
    if test:  # a trial's weights are never used again
        rundir.write_tensors(out / rundir.ADAPTER, model.trainable_state_dict())
    rundir.write_csv(out / rundir.LOG, result.history)
    rundir.write_predictions(out / rundir.PREDICTIONS, predictions)
    rundir.write_json(out / rundir.METRICS, metrics)  # last: the run is finished
    checkpoint.unlink(missing_ok=True)
    if tracker:
        tracker.finish({"task": data.name, "method": method, "seed": train_cfg.seed, "protocol": chosen.record(),
                        "general": general_spec, "medical": medical_spec, "train": train_cfg.model_dump(),
                        "method_config": config.model_dump(), "compile": metrics["compile"]}, metrics, out)
    return metrics


def _epoch_hook(tracker: Tracker | None, on_epoch: Callable[[dict], bool | None] | None):
    """The tracker's per-epoch logging and the caller's hook (whose true return stops the run) as one."""
    if tracker is None:
        return on_epoch

    def hook(row: dict) -> bool:
        tracker.epoch(row)
        return bool(on_epoch(row)) if on_epoch else False
    return hook


RESUME_INDEPENDENT = ("device", "devices", "num_nodes", "eval_batch_size", "skip_nonfinite", "auto_batch", "compile",
                      "grad_checkpointing", "num_workers")


def run_fingerprint(run_config: dict, train_images: int) -> dict:
    """What a checkpoint must agree on to be resumed: everything that decides the result (not the device)."""
    keys = ("task", "task_source", "method", "method_config", "general", "medical", "train_size", "protocol",
            "num_classes")
    train = {k: v for k, v in run_config["train"].items() if k not in RESUME_INDEPENDENT}
    dedupe = {"dedupe": run_config["dedupe"]} if run_config.get("dedupe") is not None else {}
    return {**{k: run_config[k] for k in keys}, "train": train, "train_images": train_images, **dedupe}


def read_run_config(run: Path) -> tuple[dict, tuple]:
    """A run directory's config.json and what rebuilds its model: (method, method options, general spec, medical
    spec, number of classes, seed)."""
    config = rundir.read_json(Path(run) / rundir.CONFIG)
    try:
        return config, (config["method"], config["method_config"], config["general"], config["medical"],
                        config["num_classes"], config["train"]["seed"])
    except (KeyError, TypeError) as err:
        raise MedvtabError(f"{Path(run) / rundir.CONFIG}: missing field {err}") from None


def load_run(run: Path, *, allow_download: bool = False):
    """Rebuild a trained model from its run directory: same backbones, trained weights loaded. A backbone whose
    weights would come from a hub is an error unless ``allow_download`` (a run directory may have been edited)."""
    config, (method, options, general_spec, medical_spec, num_classes, seed) = read_run_config(run)
    if "class_names" not in config:
        raise MedvtabError(f"{run / rundir.CONFIG}: missing field 'class_names'")
    method_config, backbones = prepare(method, options, general_spec, medical_spec, allow_download=allow_download)
    seed_everything(seed)
    model = build_model(method, method_config, backbones[0], backbones[1] if len(backbones) > 1 else None,
                        num_classes)
    model.load_trainable_state_dict(rundir.read_tensors(run / rundir.ADAPTER), str(run / rundir.ADAPTER))
    model.eval()
    return model, config, config["class_names"]
