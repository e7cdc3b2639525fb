"""``medvtab vqa``: MedVQA from the command line: train a stage, evaluate a run, or run the three-stage pipeline."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from medvtab.cli.common import note
from medvtab.errors import MedvtabError
from medvtab.extras import require

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="MedVQA by fusion: vision encoder + Q-Former + language model with LoRA.")


@app.callback()
def threads(threads: Optional[int] = typer.Option(None, min=1, help="torch CPU threads (default: torch's, one per "
                                                                   "core; on a machine whose cores other jobs "
                                                                   "share, 1 avoids threads stalling each "
                                                                   "other).")):
    # imported here, not at the top: keeps CLI start-up fast
    import torch
    hf_logging = require("transformers.utils.logging", extra="vqa", feature="medvtab vqa", package="transformers")

    if threads is not None:
        torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()  # per-file load/save bars of the tiny LM drown the stage notes
    # peft reads an attribute transformers 5 deprecates: nothing a user can act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)


def _held_out(text: str) -> tuple[str, ...]:
    return () if text.strip().lower() == "none" else tuple(t.strip() for t in text.split(",") if t.strip())


@app.command()
def train(
    stage: str = typer.Option(..., help="caption (image captions), vqa (general medical VQA) or finetune "
                                        "(radiology VQA)."),
    data: str = typer.Option(..., help="A set name (medpix, pmc-oa for captions; slake, vqa-rad, pmc-vqa) or a "
                                       "folder in one of their formats; several joined by '+', each with an "
                                       "optional :SPLIT (slake:train+slake:val+vqa-rad:train)."),
    out: Path = typer.Option(..., help="New run directory."),
    vision: Optional[str] = typer.Option(None, help="Backbone spec (default tiny-radiology) or dynamer:RUN_DIR; "
                                                    "with --init, that run's."),
    lm: Optional[str] = typer.Option(None, help="'tiny' (default) or hf:PATH (a local transformers causal LM); "
                                                "with --init, that run's."),
    init: Optional[Path] = typer.Option(None, help="Start from this stage run's trainable weights (and its "
                                                   "vision, LM and fusion settings)."),
    split: str = typer.Option("train"),
    epochs: int = typer.Option(3, min=1),
    batch_size: int = typer.Option(8, min=1),
    lr: float = typer.Option(2e-3, min=0.0),
    img_size: Optional[int] = typer.Option(None, min=8, help="Resample the backbone's position table to this "
                                                             "input size (tiny-general, -medical: 28 px; tiny-radiology: 64 px)."),
    token_pool: Optional[int] = typer.Option(None, min=1, help="Average the vision patch grid over KxK cells before "
                                                               "the fusion (fewer, coarser tokens; default 2)."),
    fusion: Optional[str] = typer.Option(None, help="mlp (default: every vision token through a two-layer MLP) "
                                                    "or qformer (the paper's Q-Former)."),
    num_queries: Optional[int] = typer.Option(None, min=1, help="Q-Former queries (default 32)."),
    qformer_dropout: Optional[float] = typer.Option(None, min=0.0, max=0.99, help="Q-Former dropout (default "
                                                                              "0.1)."),
    lora_r: Optional[int] = typer.Option(None, min=1, help="LoRA rank (default 8)."),
    lora_targets: Optional[str] = typer.Option(None, help="Comma-separated module names for LoRA (default: peft's "
                                                          "attention projections for the model type; every "
                                                          "linear layer for the tiny LM)."),
    seed: int = typer.Option(0),
    lang: str = typer.Option("en", help="SLAKE: en or zh."),
    data_root: Optional[Path] = typer.Option(None, help="MedVQA data root (default $MEDVTAB_VQA_DATA, else "
                                                        "shared/vqa beside the project)."),
    vocab_data: List[str] = typer.Option([], help="New tiny LM: also build its tokenizer from the train split of "
                                                  "this set (repeatable; the later stages' sets)."),
    held_out: str = typer.Option("vqa-rad:test,slake:test", help="Drop training items whose image is an image of "
                                                                "these test splits (NAME:SPLIT, comma-separated, "
                                                                "or none); a finetune stage keeps its own set's."),
    devices: int = typer.Option(1, min=1, help="Train on this many CPU processes (each global --batch-size is split "
                                               "across them; under torchrun, the launcher's processes)."),
    strategy: str = typer.Option("ddp", help="ddp, or fsdp (Fabric's sharded data parallel; needs CUDA)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N (bf16 autocast on a GPU)."),
    limit: Optional[int] = typer.Option(None, min=1, hidden=True, help="Train on the first N items (tests)."),
):
    """Train one stage and write config, trainable weights, a log (and the tiny LM) to --out."""
    # imported here, not at the top: keeps CLI start-up fast
    from medvtab.vqa.train import StageOptions, load_stage_items, texts_of, train_stage

    model_opts = {"vision": vision, "lm": lm, "img_size": img_size, "token_pool": token_pool, "fusion": fusion,
                  "num_queries": num_queries,
                  "qformer_dropout": qformer_dropout, "lora_r": lora_r,
                  "lora_targets": None if lora_targets is None else [t.strip() for t in lora_targets.split(",")]}
    given = {k for k, v in model_opts.items() if v is not None}
    if strategy not in ("ddp", "fsdp"):
        raise MedvtabError(f"option '--strategy': expected ddp or fsdp, got '{strategy}'")
    if fusion not in (None, "qformer", "mlp"):
        raise MedvtabError(f"option '--fusion': expected qformer or mlp, got '{fusion}'")
    opts = StageOptions(**{k: v for k, v in model_opts.items() if v is not None}, epochs=epochs,
                        batch_size=batch_size, lr=lr, seed=seed, lang=lang, limit=limit, devices=devices,
                        strategy=strategy, device=device)
    vocab = None
    if vocab_data and init is None:
        vocab = texts_of(load_stage_items(stage, data, split, opts, data_root, _held_out(held_out), note)[0])
        for name in vocab_data:
            kind = "caption" if name in ("medpix", "pmc-oa") else "vqa"
            vocab += texts_of(load_stage_items(kind, name, "train", opts, data_root, _held_out(held_out), note)[0])
    config = train_stage(stage, data, out, opts, split=split, init=init, given=given, root=data_root,
                         vocab_texts=vocab, held_out=_held_out(held_out), on_note=note)
    if config is None:  # another process of a multi-process run: rank 0 reports
        return
    keys = ("stage", "data", "split", "items", "dropped_leaked", "held_out", "own_test_images_in_train", "init",
            "trainable_params", "train_seconds", "final_loss", "processes")
    print(json.dumps({"out": str(out), **{k: config[k] for k in keys}}, indent=2))


@app.command("eval")
def evaluate(
    run: Path = typer.Option(..., help="A vqa or finetune stage run directory."),
    data: str = typer.Option("vqa-rad", help="vqa-rad, slake, pmc-vqa or a folder in one of their formats."),
    split: str = typer.Option("test"),
    out: Optional[Path] = typer.Option(None, help="Where answers.jsonl and metrics.json go (default: the run)."),
    data_root: Optional[Path] = typer.Option(None, help="MedVQA data root (default: the run's)."),
    limit: Optional[int] = typer.Option(None, min=1, hidden=True, help="Evaluate the first N items (tests)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N (bf16 autocast on a GPU)."),
):
    """Answer the questions by free generation (and, labelled apart, with closed answers restricted to the training
    set's), beside the majority and image-blind baselines and the shuffled-image control; print the summary."""
    # imported here, not at the top: keeps CLI start-up fast
    from medvtab.vqa.evaluate import evaluate as run_eval
    from medvtab.vqa.report import summary_line

    metrics = run_eval(run, data, split, out=out, root=data_root, limit=limit, on_note=note, device=device)
    print(summary_line(metrics))


@app.command()
def pipeline(
    out: Path = typer.Option(..., help="New folder: caption/, vqa/, finetune-<target>/ runs, metrics.json (one "
                                       "object per target) and summary.md inside."),
    config: Optional[Path] = typer.Option(None, help="YAML file: options, caption, vqa, targets, data_root "
                                                     "(see medvtab.vqa.pipeline.PipelineConfig)."),
    quick: bool = typer.Option(False, "--quick", help="Short schedule (minutes on a laptop CPU) for the settings "
                                                      "the config file leaves unset."),
):
    """caption (PMC-OA, else MedPix) -> vqa (PMC-VQA, else the targets' training splits) -> finetune on each target
    (VQA-RAD, SLAKE) -> each evaluated on its test split; prints the protocol and the tables."""
    # imported here, not at the top: keeps CLI start-up fast
    from pydantic import ValidationError

    from medvtab.vqa.pipeline import QUICK, PipelineConfig, merge, report, run_pipeline
    from medvtab.yaml_files import read_yaml

    raw = {}
    if config is not None:
        raw = read_yaml(config, option="--config") or {}
        if not isinstance(raw, dict):
            raise MedvtabError(f"{config}: expected a mapping of settings at the top level")
    try:
        cfg = PipelineConfig(**(merge(QUICK, raw) if quick else raw))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MedvtabError(f"{config or 'pipeline config'}: {where}: {first['msg']}") from None
    summary = run_pipeline(cfg, out, on_note=note)
    if summary is not None:  # None: another process of a multi-process run
        print(report(summary))


@app.command("radiology-data")
def radiology_data(
    out: Path = typer.Option(..., help="New .npz for `medvtab pretrain --variant tiny-radiology`."),
    data_root: Optional[Path] = typer.Option(None, help="MedVQA data root (VQA-RAD and SLAKE)."),
    kermany: Optional[Path] = typer.Option(None, help="kermany_cxr_64.npz (default: under the medvtab data root)."),
    kermany_images: int = typer.Option(2000, min=0, help="At most this many Kermany X-rays (whole patients)."),
    seed: int = typer.Option(0),
):
    """Build tiny-radiology's pre-training set: Kermany chest X-rays, SLAKE training images and VQA-RAD images of no
    test question, at 64 px; never a VQA-RAD or SLAKE test image, never MedPix. Prints the counts."""
    # imported here, not at the top: keeps CLI start-up fast
    from medvtab.vqa.radiology import build_radiology_set

    print(json.dumps(build_radiology_set(out, root=data_root, kermany=kermany, kermany_images=kermany_images,
                                         seed=seed), indent=2))
