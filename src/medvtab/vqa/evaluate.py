"""Evaluation of a trained stage: free generation, restricted closed-answer decoding, and what the image adds.

Reported beside the fused model on the same split, each scored by :func:`medvtab.vqa.metrics.score`:

- *free generation* (greedy), the reported number, as the paper generates its answers;
- *restricted*: the same answers, except that each closed question gets the likeliest of the closed answers seen in
  training (a choice among a few dozen strings, not comparable with generated answers: labelled apart);
- the *majority* baseline: the most frequent training answer per answer type;
- the *image-blind* baseline: the same LM and LoRA trained as long on the same questions without the image;
- the *shuffled-image* control: the fused model itself, with each question's image tokens replaced by those of a
  random other image of the split (seeded). Where the model reads the image, this falls below it; where it only
  reads the question, it does not.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from medvtab.atomic import atomic_write, make_output_dir, write_json
from medvtab.engine.loop import seed_everything
from medvtab.engine.precision import autocast
from medvtab.engine.rundir import check_new_run_dir
from medvtab.errors import MedvtabError
from medvtab.vqa import data as vqa_data
from medvtab.vqa.metrics import majority_answers, normalize_answer, score
from medvtab.vqa.model import VQAModel, collate, encode_text, question_prompt
from medvtab.vqa.train import (HELD_OUT, Note, fit, image_features, load_model, load_stage_items, read_config,
                               run_device, sequences)
from medvtab.vqa.vision import load_vision

ANSWERS, METRICS = "answers.jsonl", "metrics.json"
FREE = "free generation (greedy)"
# Overall accuracy of the fusion paper (arXiv 2404.16192: BiomedCLIP-ViT + RadBloomz-7b, three stages, 4 A100s).
PAPER = {"vqa-rad": 0.732, "slake": 0.875}


def generate(model: VQAModel, tokenizer, features, rows, items: list, batch_size: int = 32,
             max_new_tokens: int = 10) -> list[str]:
    """Greedy free-text answers to every question (``features``/``rows``: the image tokens; None when blind)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    device = model.lm.get_input_embeddings().weight.device
    answers = []
    for start in range(0, len(items), batch_size):
        idx = list(range(start, min(start + batch_size, len(items))))
        feats = None if features is None else features[rows[idx]].to(device)
        prompts = [encode_text(tokenizer, question_prompt(items[i].question))[0] for i in idx]
        ids, mask, _ = collate([(p, len(p)) for p in prompts], pad, left=True)
        with autocast(device):
            out = model.generate(feats, ids.to(device), mask.to(device), eos, pad, max_new_tokens)
        answers += [tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in out]
    return answers


def restrict(model: VQAModel, tokenizer, features, rows, items: list, free: list[str], candidates: list[str],
             batch_size: int = 32) -> list[str]:
    """``free`` with every closed question's answer replaced by the likeliest of ``candidates``."""
    if not candidates:
        return list(free)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    device = model.lm.get_input_embeddings().weight.device
    cand_ids = [tokenizer(" " + c, add_special_tokens=False)["input_ids"] + [eos] for c in candidates]
    answers = list(free)
    closed = [i for i, item in enumerate(items) if item.answer_type == "closed"]
    for start in range(0, len(closed), batch_size):
        idx = closed[start:start + batch_size]
        feats = None if features is None else features[rows[idx]].to(device)
        prompts = [encode_text(tokenizer, question_prompt(items[i].question))[0] for i in idx]
        with autocast(device):
            scores = model.score_candidates(feats, prompts, cand_ids, pad)
        for i, best in zip(idx, scores.argmax(dim=1).tolist()):
            answers[i] = candidates[best]
    return answers


def predict(model: VQAModel, tokenizer, features, rows, items: list,
            candidates: list[str] | None) -> tuple[list[str], list[str]]:
    """(free answers, restricted answers) for every item."""
    free = generate(model, tokenizer, features, rows, items)
    return free, restrict(model, tokenizer, features, rows, items, free, candidates or [])


def shuffled_rows(rows: torch.Tensor, seed: int) -> torch.Tensor:
    """Per item, the row of a random image of the split other than its own (seeded): the shuffled-image control."""
    n = int(rows.max()) + 1 if len(rows) else 0
    if n < 2:
        raise MedvtabError("the shuffled-image control needs at least two distinct images in the split")
    draw = torch.randint(0, n - 1, (len(rows),), generator=torch.Generator().manual_seed(seed))
    return draw + (draw >= rows).long()  # skips the item's own row: every other image equally likely


def image_blind_model(run: Path, train_items: list, on_note: Note, device: torch.device = torch.device("cpu")):
    """(model, tokenizer): the run's LM and LoRA trained as long on the same questions without the image."""
    seed_everything(read_config(run)["options"]["seed"])  # before the LoRA weights are drawn: the same in any process
    model, tokenizer, opts, _ = load_model(run, blind=True)
    fit(model, sequences(train_items, tokenizer), None, None, tokenizer, opts, on_note, "image-blind", device=device)
    return model, tokenizer


def _scored(free: list[str], restricted: list[str], items: list) -> dict:
    return {**score(free, items), "restricted": score(restricted, items)}


def evaluate(run: Path, data: str, split: str = "test", *, out: Path | None = None, root=None,
             limit: int | None = None, on_note: Note = print, device: str = "cpu") -> dict:
    """Answer every question of ``data``/``split`` with the run's model, free and restricted, beside the majority and
    image-blind baselines and the shuffled-image control, on ``device``; writes ``answers.jsonl`` and
    ``metrics.json`` to ``out`` (default: the run directory)."""
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
    train, _ = load_stage_items(config["stage"], config["data"], config["split"], opts, root,
                                config.get("held_out", HELD_OUT), on_note=lambda _: None)
    candidates = vqa_data.closed_candidates(train)
    features, rows = image_features(load_vision(opts.vision, opts.img_size, opts.token_pool), test, device=torch_device)
    start = time.perf_counter()
    free, restricted = predict(model, tokenizer, features, rows, test, candidates)
    eval_seconds = time.perf_counter() - start
    shuffled = predict(model, tokenizer, features, shuffled_rows(rows, opts.seed), test, candidates)
    blind_model, blind_tokenizer = image_blind_model(run, train, on_note, torch_device)
    blind = predict(blind_model, blind_tokenizer, None, None, test, candidates)
    key = vqa_data.set_key(data)
    metrics = {
        **_scored(free, restricted, test),
        "decoding": FREE,
        "restricted_decoding": f"closed questions: the likeliest of the {len(candidates)} closed answers of the "
                               f"training set; open questions: free generation",
        "baselines": {"majority": score(majority_answers(train, test), test),
                      "image_blind": _scored(*blind, test),
                      "shuffled_image": _scored(*shuffled, test)},
        "paper": {"overall_accuracy": PAPER[key]} if key in PAPER and split == "test" else None,
        "run": str(run.resolve()), "data": str(data), "split": split, "stage": config["stage"],
        "vision": opts.vision, "lm": opts.lm,
        "trained_on": {"data": config["data"], "split": config["split"], "items": len(train)},
        "lineage": config["lineage"] + [str(run.resolve())], "eval_seconds": round(eval_seconds, 2),
    }
    answers = [{"qid": i.qid, "question": i.question, "answer_type": i.answer_type, "question_type": i.question_type,
                "gold": i.answer, "prediction": p, "correct": normalize_answer(p) == normalize_answer(i.answer),
                "restricted": r, "shuffled_image": s, "image_blind": b}
               for i, p, r, s, b in zip(test, free, restricted, shuffled[0], blind[0])]
    make_output_dir(out)
    atomic_write(out / ANSWERS, lambda tmp: Path(tmp).write_text("".join(json.dumps(a) + "\n" for a in answers)))
    write_json(out / METRICS, metrics)
    return metrics
