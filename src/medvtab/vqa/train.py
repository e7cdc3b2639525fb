"""Training stages (their evaluation: :mod:`medvtab.vqa.evaluate`; the stages in a row: :mod:`medvtab.vqa.pipeline`).

A stage run directory holds ``config.json`` (stage, data, specs, hyperparameters, the lineage of runs it started
from), ``trainable.safetensors`` (the fusion and LoRA), ``log.csv`` (one row per epoch) and, for
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

from medvtab.atomic import write_csv, write_json
from medvtab.engine.distributed import launch as launch_fabric
from medvtab.engine.loop import seed_everything
from medvtab.engine.precision import autocast
from medvtab.engine.rundir import check_new_run_dir, read_tensors, staged_run_dir, write_tensors
from medvtab.engine.schedule import warmup_cosine, warmup_steps
from medvtab.errors import MedvtabError
from medvtab.vqa import data as vqa_data
from medvtab.vqa.lm import TINY, TINY_LORA_TARGETS, HF_PREFIX, add_lora, build_tiny, check_spec, load_base, save_base
from medvtab.vqa.model import CAPTION_PROMPT, IGNORE, QFormerConfig, VQAModel, collate, encode_text, question_prompt
from medvtab.vqa.vision import VisionEncoder, load_vision

STAGES = ("caption", "vqa", "finetune")
CONFIG, WEIGHTS, LOG, LM_DIR = "config.json", "trainable.safetensors", "log.csv", "lm"
HELD_OUT = ("vqa-rad:test", "slake:test")  # no stage trains on these test splits' images (see stage_held_out)
WARMUP_FRACTION, LR_FLOOR = 0.05, 0.1  # warm-up over 5 % of the steps, cosine decay to a tenth (nanoGPT's schedule)
Note = Callable[[str], None]


class StageOptions(BaseModel):
    """What a stage trains with; a stage started from ``init`` takes vision, LM, image size, fusion and LoRA
    settings from that run (they define the weights it continues)."""
    model_config = ConfigDict(extra="forbid")
    # tiny-radiology, 2x2 token pooling and the MLP fusion: the vision side whose fused model scored highest overall
    # on both targets, and the fusion whose answers depend on the image (the tiny Q-Former's did not); pooling
    # halves the training time at no cost in accuracy (docs/medvqa.md).
    vision: str = "tiny-radiology"
    lm: str = TINY
    img_size: Optional[int] = Field(None, ge=8)
    token_pool: int = Field(2, ge=1)  # average the vision patch grid over k x k cells (medvtab.vqa.vision)
    fusion: Literal["qformer", "mlp"] = "mlp"
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


INHERITED = ("vision", "lm", "img_size", "token_pool", "fusion", "num_queries", "qformer_hidden", "qformer_layers", "qformer_heads",
             "lora_r", "lora_targets")


# --- data ------------------------------------------------------------------------------------------------------
def sources(data: str, split: str) -> list[tuple[str, str]]:
    """``NAME[:SPLIT]+NAME[:SPLIT]...`` as (name, split) pairs, ``split`` where a part names none: a stage may
    train on several sets at once (the general-VQA stage without PMC-VQA)."""
    out = []
    for part in str(data).split("+"):
        name, sep, own = part.strip().rpartition(":")
        named = sep and own and not any(c in own for c in "/\\")  # 'C:\\data' is a folder, not a split
        out.append((name, own) if named else (part.strip(), split))
    return out


def held_out_items(refs, root) -> list:
    """The test items named by 'NAME:SPLIT' references (split 'test' when none is given)."""
    items = []
    for ref in refs:
        name, _, split = ref.rpartition(":") if ":" in ref else (ref, "", "test")
        items += vqa_data.load_vqa(name, split, root=root)
    return items


def _ref_set(ref: str) -> str:
    return ref.rpartition(":")[0] or ref


def stage_held_out(stage: str, data: str, held_out, root) -> list[str]:
    """The test splits whose images a stage must not train on: those of ``held_out`` present under the data root,
    except that a finetune stage keeps its own set's (VQA-RAD's official split is by question: 202 of its 203 test
    images are train images too, under other questions; SLAKE's splits share no image)."""
    present = [ref for ref in held_out if vqa_data.is_present(_ref_set(ref), root)]
    if stage != "finetune":
        return present
    own = {vqa_data.set_folder(name, root) for name, _ in sources(data, "train")}
    return [ref for ref in present if vqa_data.set_folder(_ref_set(ref), root) not in own]


def own_test_images(items: list, stage: str, data: str, held_out, root) -> int:
    """How many distinct training images are also images of the held-out test splits a finetune stage keeps
    (its own set's): VQA-RAD's official split shares them by design, and the run says so."""
    kept = set(stage_held_out(stage, data, held_out, root))
    own = [ref for ref in held_out if ref not in kept and vqa_data.is_present(_ref_set(ref), root)]
    if not own:
        return 0
    clean, _ = vqa_data.drop_leaked(items, held_out_items(own, root))
    return len({i.image for i in items}) - len({i.image for i in clean})


def load_stage_items(stage: str, data: str, split: str, opts: StageOptions, root, held_out=HELD_OUT,
                     on_note: Note = print) -> tuple[list, int]:
    """The stage's training items (captions for 'caption', questions otherwise) from every source of ``data``,
    without those whose image is a held-out test image (:func:`stage_held_out`), the first ``limit`` of them;
    and how many were dropped."""
    items = []
    for name, part in sources(data, split):
        items += (vqa_data.load_captions(name, part, root=root) if stage == "caption"
                  else vqa_data.load_vqa(name, part, lang=opts.lang, root=root))
    absent = [ref for ref in held_out if not vqa_data.is_present(_ref_set(ref), root)]
    if absent:
        on_note(f"{stage}: held-out {', '.join(absent)} not under the MedVQA data root: its images are not checked")
    refs = stage_held_out(stage, data, held_out, root)
    items, dropped = vqa_data.drop_leaked(items, held_out_items(refs, root))
    if dropped:
        on_note(f"{stage}: dropped {dropped} item(s) whose image is a held-out test image ({', '.join(refs)})")
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
    return VQAModel(lora, vision_width, opts.qformer(), opts.fusion)


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
    config["options"].setdefault("fusion", "qformer")  # runs from before the fusion option have a Q-Former
    config["options"].setdefault("token_pool", 1)  # and the whole patch grid
    return config


def inherit(opts: StageOptions, init_config: dict, given: set[str]) -> StageOptions:
    """The init run's model-defining settings; a different value given explicitly is an error."""
    old = init_config["options"]
    for key in INHERITED:
        if key in given and getattr(opts, key) != old.get(key):
            raise MedvtabError(f"option '{key}': the --init run was trained with {old.get(key)!r}, got "
                               f"{getattr(opts, key)!r} (a stage continues its init run's model)")
    return opts.model_copy(update={k: old[k] for k in INHERITED})


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
    encoder = load_vision(opts.vision, opts.img_size, opts.token_pool)
    device = fabric.device if fabric is not None else run_device(opts.device)
    features, rows = image_features(encoder, items, device=device)
    shared = own_test_images(items, stage, data, held_out, root)
    if shared:
        on_note(f"{stage}: {shared} training image(s) of {data} are also its test images, under other questions "
                f"(the set's official split is by question)")
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
            "items": len(items), "dropped_leaked": dropped, "held_out": stage_held_out(stage, data, held_out, root),
            "own_test_images_in_train": shared,
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
