"""Training stages and evaluation with reference baselines (the three stages in a row: :mod:`medvtab.vqa.pipeline`).

A stage run directory holds ``config.json`` (stage, data, specs, hyperparameters, the lineage of runs it started
from), ``trainable.safetensors`` (Q-Former, queries, projection, LoRA), ``log.csv`` (one row per epoch) and, for
the tiny LM, ``lm/`` (its random base weights and the tokenizer built from the training text, so later stages and
evaluation use exactly the same language model). Vision tokens are computed once per image and kept in memory:
only the fusion and the adapters train.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from contextlib import nullcontext
from typing import Callable, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field

from medvtab.atomic import atomic_write, make_output_dir, write_csv, write_json
from medvtab.engine.distributed import launch as launch_fabric
from medvtab.engine.loop import seed_everything
from medvtab.engine.precision import autocast
from medvtab.engine.rundir import check_new_run_dir, read_tensors, staged_run_dir, write_tensors
from medvtab.engine.schedule import warmup_cosine, warmup_steps
from medvtab.errors import MedvtabError
from medvtab.vqa import data as vqa_data
from medvtab.vqa.lm import TINY, TINY_LORA_TARGETS, HF_PREFIX, add_lora, build_tiny, check_spec, load_base, save_base
from medvtab.vqa.metrics import majority_answers, normalize_answer, score
from medvtab.vqa.model import CAPTION_PROMPT, IGNORE, QFormerConfig, VQAModel, collate, encode_text, question_prompt
from medvtab.vqa.vision import VisionEncoder, load_vision

STAGES = ("caption", "vqa", "finetune")
CONFIG, WEIGHTS, LOG, LM_DIR = "config.json", "trainable.safetensors", "log.csv", "lm"
ANSWERS, METRICS = "answers.jsonl", "metrics.json"
HELD_OUT = ("vqa-rad:test", "slake:test")  # caption images that are also test images are dropped
WARMUP_FRACTION, LR_FLOOR = 0.05, 0.1  # warm-up over 5 % of the steps, cosine decay to a tenth (nanoGPT's schedule)
Note = Callable[[str], None]


class StageOptions(BaseModel):
    """What a stage trains with; a stage started from ``init`` takes vision, LM, image size, fusion and LoRA
    settings from that run (they define the weights it continues)."""
    model_config = ConfigDict(extra="forbid")
    vision: str = "tiny-medical"
    lm: str = TINY
    img_size: Optional[int] = Field(None, ge=8)
    num_queries: int = Field(32, ge=1)
    qformer_hidden: int = Field(128, ge=8)
    qformer_layers: int = Field(2, ge=1)
    qformer_heads: int = Field(4, ge=1)
    qformer_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    lora_r: int = Field(8, ge=1)
    lora_targets: Optional[list[str]] = None
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(8, ge=1)  # small batches: the tiny random LM needs many updates more than big ones
    lr: float = Field(2e-3, gt=0)
    seed: int = 0
    lang: str = "en"
    limit: Optional[int] = Field(None, ge=1, description="train on the first N items only (tests)")
    # How the run is spread, not what it trains (never taken from an --init run): each global batch is split
    # across ``devices`` processes (medvtab.engine.distributed); the result is the one-process one up to
    # floating-point order, except for the Q-Former's dropout, whose random draws depend on the split.
    devices: int = Field(1, ge=1)
    strategy: Literal["ddp", "fsdp"] = "ddp"
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"; on CUDA the LM and fusion run under bf16 autocast

    def qformer(self) -> QFormerConfig:
        return QFormerConfig(self.num_queries, self.qformer_hidden, self.qformer_layers, self.qformer_heads,
                             self.qformer_dropout)


INHERITED = ("vision", "lm", "img_size", "num_queries", "qformer_hidden", "qformer_layers", "qformer_heads",
             "lora_r", "lora_targets")


# --- data ------------------------------------------------------------------------------------------------------
def held_out_items(refs, root) -> list:
    """The test items named by 'NAME:SPLIT' references (split 'test' when none is given)."""
    items = []
    for ref in refs:
        name, _, split = ref.rpartition(":") if ":" in ref else (ref, "", "test")
        items += vqa_data.load_vqa(name, split, root=root)
    return items


def load_stage_items(stage: str, data: str, split: str, opts: StageOptions, root, held_out=HELD_OUT,
                     on_note: Note = print) -> tuple[list, int]:
    """The stage's training items (captions for 'caption', questions otherwise), the first ``limit`` of them,
    and how many caption items were dropped because their image is a held-out test image."""
    if stage == "caption":
        items = vqa_data.load_captions(data, split, root=root)
        items, dropped = vqa_data.drop_leaked(items, held_out_items(held_out, root))
        if dropped:
            on_note(f"caption: dropped {dropped} item(s) whose image is a held-out test image ({', '.join(held_out)})")
    else:
        items, dropped = vqa_data.load_vqa(data, split, lang=opts.lang, root=root), 0
    items = items[:opts.limit] if opts.limit else items
    if not items:
        raise MedvtabError(f"{data} {split}: no training items")
    return items, dropped


def texts_of(items: list) -> list[str]:
    """Every training string of ``items`` (questions and answers, or captions): what the tiny tokenizer learns."""
    out = []
    for item in items:
        out += [item.caption] if hasattr(item, "caption") else [item.question, item.answer]
    return out


def sequences(items: list, tokenizer) -> list[tuple[list[int], int]]:
    """(ids, prompt length) per item: the caption after 'Caption:', or the answer after the question."""
    if items and hasattr(items[0], "caption"):
        return [encode_text(tokenizer, CAPTION_PROMPT, i.caption) for i in items]
    return [encode_text(tokenizer, question_prompt(i.question), i.answer) for i in items]


def run_device(name: str) -> torch.device:
    """The ``--device`` option as a device, refused where it does not exist."""
    if name != "cpu" and not re.fullmatch(r"cuda(:\d+)?", name):
        raise MedvtabError(f"option '--device': expected cpu, cuda or cuda:N, got '{name}'")
    if name != "cpu" and not torch.cuda.is_available():
        raise MedvtabError("option '--device': cuda requested but no CUDA device is available")
    return torch.device(name)


def image_features(encoder: VisionEncoder | None, items: list, batch_size: int = 64,
                   device: torch.device = torch.device("cpu")):
    """Vision tokens of each distinct image once (computed on ``device``, kept on the CPU), and per item the row
    of its image (None when blind)."""
    if encoder is None:
        return None, None
    paths = list(dict.fromkeys(i.image for i in items))
    row = {p: n for n, p in enumerate(paths)}
    with autocast(device):
        features = encoder.to(device).encode(vqa_data.load_images(paths, encoder.input_size), batch_size, device)
    return features, torch.tensor([row[i.image] for i in items])


# --- model ------------------------------------------------------------------------------------------------------
def base_lm(opts: StageOptions, run: Path | None, texts: list[str] | None):
    """The frozen base LM and tokenizer: a new tiny one built from ``texts``, a saved tiny one (``run/lm``),
    or ``hf:PATH``."""
    if opts.lm == TINY:
        return build_tiny(texts) if run is None else load_base(run / LM_DIR)
    return load_base(Path(opts.lm.removeprefix(HF_PREFIX)))


def build_model(opts: StageOptions, lm, vision_width: int | None) -> VQAModel:
    """LoRA on the frozen LM, and the fusion for ``vision_width``-wide tokens (None: the image-blind model)."""
    tiny = opts.lm == TINY
    targets = opts.lora_targets or (TINY_LORA_TARGETS if tiny else None)
    # The tiny LM's (tied) token embeddings train with the adapters: a random-init LM knows no words, and no
    # low-rank update of its layers teaches it the vocabulary. Measured on VQA-RAD (finetune stage alone, 8 epochs):
    # answer loss 2.99 -> 1.38, closed accuracy 0.515 -> 0.629. An hf: LM keeps them frozen (LoRA only, as the paper).
    lora = add_lora(lm, opts.lora_r, targets, train_embeddings=tiny)
    return VQAModel(lora, vision_width, opts.qformer())


# --- the loop ---------------------------------------------------------------------------------------------------
def launch(opts: StageOptions):
    """A launched Fabric for ``opts.devices`` processes on ``opts.device`` (or a torchrun group), None for one
    process."""
    run_device(opts.device)
    return launch_fabric(opts.device, opts.devices, 1, opts.strategy)


def fit(model: VQAModel, seqs: list, features, feature_rows, tokenizer, opts: StageOptions,
        on_note: Note, label: str, fabric=None, device: torch.device = torch.device("cpu")) -> list[dict]:
    """AdamW on the trainable parameters, shuffled mini-batches; returns one log row per epoch.

    ``fabric``: every process draws the same global batches and takes positions rank, rank + W, ... of each; its
    loss is the sum over its answer tokens divided by the global token count (times W, which DDP's gradient
    average divides out), so the update is the one-process update on the whole global batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=0.01)
    rank, world, wrapped = 0, 1, model.to(device)
    if fabric is not None:
        rank, world, device = fabric.global_rank, fabric.world_size, fabric.device
        wrapped, optimizer = fabric.setup(model, optimizer)
    generator = torch.Generator().manual_seed(opts.seed)
    steps = math.ceil(len(seqs) / opts.batch_size)
    total, step, log = steps * opts.epochs, 0, []
    warmup = warmup_steps(total, WARMUP_FRACTION)
    model.train()
    for epoch in range(opts.epochs):
        start, losses = time.perf_counter(), []
        for batch in torch.randperm(len(seqs), generator=generator).split(opts.batch_size):
            share, weight = batch[rank::world], 1.0
            if len(share) == 0:  # a last batch with fewer items than processes: a zero-weight item keeps DDP in step
                share, weight = batch[:1], 0.0
            ids, mask, labels = (t.to(device) for t in collate([seqs[i] for i in share.tolist()],
                                                               tokenizer.pad_token_id))
            feats = None if features is None else features[feature_rows[share]].to(device)
            with autocast(device):
                loss = wrapped(feats, ids, mask, labels).loss.float()  # the mean over this share's answer tokens
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(step, total, warmup, opts.lr, floor=LR_FLOOR, fraction_first=True)
            optimizer.zero_grad(set_to_none=True)
            if fabric is None:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                value = loss.item()
            else:
                tokens = (labels != IGNORE).sum() * weight
                summed = loss * tokens
                total_sum, total_tokens = fabric.all_reduce(torch.stack([summed.detach(), tokens.float()]),
                                                            reduce_op="sum")
                fabric.backward(summed * world / total_tokens)
                fabric.clip_gradients(wrapped, optimizer, max_norm=1.0)
                value = (total_sum / total_tokens).item()  # the global batch's mean: the same on every process
            optimizer.step()
            if not math.isfinite(value):
                raise MedvtabError(f"{label}: the loss became {value} at epoch {epoch + 1}; lower --lr")
            losses.append(value)
            step += 1
        row = {"epoch": epoch + 1, "loss": sum(losses) / len(losses), "seconds": time.perf_counter() - start}
        on_note(f"{label}: epoch {row['epoch']}/{opts.epochs} loss {row['loss']:.4f} ({row['seconds']:.1f} s)")
        log.append(row)
    model.eval()
    return log


# --- a stage ----------------------------------------------------------------------------------------------------
def read_config(run: Path) -> dict:
    path = Path(run) / CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise MedvtabError(f"{path}: not found (is {run} a `medvtab vqa train` run?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MedvtabError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("stage") not in STAGES or "options" not in config:
        raise MedvtabError(f"{path}: not the config of a `medvtab vqa train` run")
    return config


def inherit(opts: StageOptions, init_config: dict, given: set[str]) -> StageOptions:
    """The init run's model-defining settings; a different value given explicitly is an error."""
    old = init_config["options"]
    for key in INHERITED:
        if key in given and getattr(opts, key) != old.get(key):
            raise MedvtabError(f"option '{key}': the --init run was trained with {old.get(key)!r}, got "
                               f"{getattr(opts, key)!r} (a stage continues its init run's model)")
    return opts.model_copy(update={k: old.get(k) for k in INHERITED})


def load_model(run: Path, blind: bool = False):
    """(model with the run's trained weights, tokenizer, options) from a stage run directory."""
    config = read_config(run)
    opts = StageOptions(**config["options"])
    lm, tokenizer = base_lm(opts, run, None)
    model = build_model(opts, lm, None if blind else config["vision_width"])
    if not blind:
        model.load_trainable_state_dict(read_tensors(run / WEIGHTS), str(run / WEIGHTS))
    model.eval()
    return model, tokenizer, opts, config


def train_stage(stage: str, data: str, out: Path, opts: StageOptions, *, split: str = "train",
                init: Path | None = None, given: set[str] = frozenset(), root=None,
                vocab_texts: list[str] | None = None, held_out=HELD_OUT, on_note: Note = print,
                fabric=None) -> dict | None:
    """Train one stage into the new run directory ``out``; returns its config.

    ``init``: continue that run's trainable weights (its vision, LM and fusion settings are taken over;
    ``given`` names the options set explicitly, which must agree). ``vocab_texts``: for a new tiny LM, the text
    its tokenizer is built from (default: this stage's own text; the pipeline passes every stage's training
    text, so the later stages share the tokenizer).

    ``opts.devices`` > 1 (or torchrun) trains on several processes (``fabric``: the pipeline's, launched once);
    only global rank 0 writes ``out`` and gets the config, the others get None."""

    if stage not in STAGES:
        raise MedvtabError(f"option '--stage': expected one of {', '.join(STAGES)}, got '{stage}'")
    out = Path(out)
    check_new_run_dir(out)
    fabric = fabric if fabric is not None else launch(opts)
    writer = fabric is None or fabric.global_rank == 0
    if not writer:  # the other processes train in step, silently
        on_note = lambda message: None  # noqa: E731
    init_config = read_config(init) if init is not None else None
    if init_config is not None:
        opts = inherit(opts, init_config, given)
    check_spec(opts.lm)
    items, dropped = load_stage_items(stage, data, split, opts, root, held_out, on_note)
    seed_everything(opts.seed)
    if init is not None and opts.lm == TINY:
        lm, tokenizer = base_lm(opts, Path(init), None)
    else:
        lm, tokenizer = base_lm(opts, None, vocab_texts or texts_of(items))
    encoder = load_vision(opts.vision, opts.img_size)
    device = fabric.device if fabric is not None else run_device(opts.device)
    features, rows = image_features(encoder, items, device=device)
    with staged_run_dir(out) if writer else nullcontext() as stage_dir:
        if opts.lm == TINY and writer:
            save_base(lm, tokenizer, stage_dir / LM_DIR)  # the plain base LM, before LoRA wraps it
        model = build_model(opts, lm, encoder.width)
        if init is not None:
            model.load_trainable_state_dict(read_tensors(Path(init) / WEIGHTS), str(Path(init) / WEIGHTS))
        start = time.perf_counter()
        log = fit(model, sequences(items, tokenizer), features, rows, tokenizer, opts, on_note, stage, fabric,
                  device)
        config = {
            "stage": stage, "data": str(data), "split": split, "root": None if root is None else str(root),
            "options": opts.model_dump(), "vision_width": encoder.width, "vision_tokens": encoder.num_tokens,
            "input_size": encoder.input_size, "vocab_size": len(tokenizer),
            "init": None if init is None else str(Path(init).resolve()),
            "lineage": [] if init_config is None else init_config["lineage"] + [str(Path(init).resolve())],
            "items": len(items), "dropped_leaked": dropped, "held_out": list(held_out) if stage == "caption" else [],
            "trainable_params": sum(v.numel() for v in model.trainable_state_dict().values()),
            "train_seconds": round(time.perf_counter() - start, 2), "final_loss": log[-1]["loss"],
            "processes": 1 if fabric is None else fabric.world_size,
        }
        if writer:
            write_tensors(stage_dir / WEIGHTS, model.trainable_state_dict())
            write_csv(stage_dir / LOG, log)
            write_json(stage_dir / CONFIG, config)
    if fabric is not None:
        fabric.barrier()  # the next stage of a pipeline reads this run on every process
    return config if writer else None


# --- evaluation ---------------------------------------------------------------------------------------------------
def predict(model: VQAModel, tokenizer, features, rows, items: list, candidates: list[str] | None,
            batch_size: int = 32, max_new_tokens: int = 10) -> list[str]:
    """Greedy answers; closed questions pick the likeliest of ``candidates`` instead when given."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    device = model.lm.get_input_embeddings().weight.device
    cand_ids = None
    if candidates:
        cand_ids = [tokenizer(" " + c, add_special_tokens=False)["input_ids"] + [eos] for c in candidates]
    answers = [""] * len(items)
    for start in range(0, len(items), batch_size):
        idx = list(range(start, min(start + batch_size, len(items))))
        feats = None if features is None else features[rows[idx]].to(device)
        prompts = [encode_text(tokenizer, question_prompt(items[i].question))[0] for i in idx]
        closed = [k for k, i in enumerate(idx) if cand_ids and items[i].answer_type == "closed"]
        free = [k for k in range(len(idx)) if k not in closed]
        if closed:
            with autocast(device):
                scores = model.score_candidates(None if feats is None else feats[closed],
                                                [prompts[k] for k in closed], cand_ids, pad)
            for k, best in zip(closed, scores.argmax(dim=1).tolist()):
                answers[idx[k]] = candidates[best]
        if free:
            ids, mask, _ = collate([(prompts[k], len(prompts[k])) for k in free], pad, left=True)
            with autocast(device):
                out = model.generate(None if feats is None else feats[free], ids.to(device), mask.to(device), eos,
                                     pad, max_new_tokens)
            for k, tokens in zip(free, out):
                answers[idx[k]] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return answers


def image_blind_baseline(run: Path, train_items: list, test_items: list, candidates, on_note: Note,
                         device: torch.device = torch.device("cpu")) -> list[str]:
    """The same LM and LoRA trained as long on the same questions without the image: what the question alone
    gives away."""

    seed_everything(read_config(run)["options"]["seed"])  # before the LoRA weights are drawn: the same in any process
    model, tokenizer, opts, _ = load_model(run, blind=True)
    fit(model, sequences(train_items, tokenizer), None, None, tokenizer, opts, on_note, "image-blind",
        device=device)
    return predict(model, tokenizer, None, None, test_items, candidates)


def evaluate(run: Path, data: str, split: str = "test", *, closed_candidates: bool = True, out: Path | None = None,
             root=None, limit: int | None = None, on_note: Note = print, device: str = "cpu") -> dict:
    """Answer every question of ``data``/``split`` and score it beside the majority and image-blind baselines,
    on ``device``; writes ``answers.jsonl`` and ``metrics.json`` to ``out`` (default: the run directory)."""
    run = Path(run)
    torch_device = run_device(device)
    model, tokenizer, opts, config = load_model(run)
    model.to(torch_device)
    if config["stage"] == "caption":
        raise MedvtabError(f"{run}: a caption stage run answers no questions; evaluate a vqa or finetune run")
    root = root if root is not None else config.get("root")
    if out is not None and Path(out).resolve() != run.resolve():
        check_new_run_dir(Path(out))
    out = Path(out) if out is not None else run
    test = vqa_data.load_vqa(data, split, lang=opts.lang, root=root)
    test = test[:limit] if limit else test
    train, _ = load_stage_items(config["stage"], config["data"], config["split"], opts, root, on_note=on_note)
    candidates = vqa_data.closed_candidates(train) if closed_candidates else None
    features, rows = image_features(load_vision(opts.vision, opts.img_size), test, device=torch_device)
    start = time.perf_counter()
    predictions = predict(model, tokenizer, features, rows, test, candidates)
    eval_seconds = time.perf_counter() - start
    blind = image_blind_baseline(run, train, test, candidates, on_note, torch_device)
    metrics = {
        **score(predictions, test),
        "baselines": {"majority": score(majority_answers(train, test), test),
                      "image_blind": score(blind, test)},
        "run": str(run.resolve()), "data": str(data), "split": split, "stage": config["stage"],
        "decoding": "closed candidates" if closed_candidates else "greedy",
        "closed_candidates": len(candidates or []), "vision": opts.vision, "lm": opts.lm,
        "trained_on": {"data": config["data"], "split": config["split"], "items": len(train)},
        "lineage": config["lineage"] + [str(run.resolve())], "eval_seconds": round(eval_seconds, 2),
    }
    rows_out = [{"qid": i.qid, "question": i.question, "answer_type": i.answer_type, "gold": i.answer,
                 "prediction": p, "correct": normalize_answer(p) == normalize_answer(i.answer)}
                for i, p in zip(test, predictions)]
    make_output_dir(out)
    atomic_write(out / ANSWERS, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in rows_out)))
    write_json(out / METRICS, metrics)
    return metrics


def summary_line(metrics: dict) -> str:
    """closed/open/overall accuracy of the model and both baselines, one line."""
    def triple(m):
        return "/".join("-" if m[k] is None else f"{m[k]:.3f}" for k in
                        ("closed_accuracy", "open_accuracy", "overall_accuracy"))
    b = metrics["baselines"]
    return (f"{metrics['data']} {metrics['split']} closed/open/overall: model {triple(metrics)}, "
            f"majority {triple(b['majority'])}, image-blind {triple(b['image_blind'])}")
