"""The paper's protocol from one config: captions -> general medical VQA -> fine-tuning on each target set from the
general-VQA weights, each target evaluated on its own test split (:mod:`medvtab.vqa.evaluate`), side by side.

Where the paper's pre-training sets are absent, the run says what replaced them: MedPix 2.0 captions for PMC-OA, and
for PMC-VQA the training splits of the target sets (SLAKE train and validation, VQA-RAD train). No stage trains on
an image of a target's test split (:func:`medvtab.vqa.train.stage_held_out`); the one exception, stated in the run,
is VQA-RAD's own fine-tuning, whose official split is by question (its train and test questions share images).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medvtab.atomic import write_json, atomic_write
from medvtab.engine.rundir import check_new_run_dir
from medvtab.errors import MedvtabError
from medvtab.vqa import data as vqa_data
from medvtab.vqa.evaluate import METRICS, evaluate
from medvtab.vqa.lm import TINY
from medvtab.vqa.report import question_types, side_by_side
from medvtab.vqa.train import HELD_OUT, Note, StageOptions, launch, load_stage_items, texts_of, train_stage

GENERAL_VQA_SUBSTITUTE = "slake:train+slake:val+vqa-rad:train"
# stage -> (the paper's set, what replaces it where that set is absent)
PAPER_SETS = {"caption": ("pmc-oa", "medpix"), "vqa": ("pmc-vqa", GENERAL_VQA_SUBSTITUTE)}
SUMMARY = "summary.md"


class StageData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: Optional[str] = None  # None: the paper's set where present, else its substitute (PAPER_SETS)
    split: str = "train"
    epochs: int = Field(ge=1)


class TargetData(BaseModel):
    """A target set: fine-tuned on ``split`` from the general-VQA weights, evaluated on ``test_split``."""
    model_config = ConfigDict(extra="forbid")
    data: str
    epochs: int = Field(ge=1)
    split: str = "train"
    test_split: str = "test"
    limit: Optional[int] = Field(None, ge=1, description="evaluate the first N test questions only (tests)")


class PipelineConfig(BaseModel):
    """The stages and targets from one file: ``options`` are shared (each stage continues the last)."""
    model_config = ConfigDict(extra="forbid")
    options: StageOptions = StageOptions()
    caption: StageData = StageData(epochs=2)
    vqa: StageData = StageData(epochs=3)
    targets: list[TargetData] = [TargetData(data="vqa-rad", epochs=15), TargetData(data="slake", epochs=20)]
    data_root: Optional[str] = None

    @field_validator("targets")
    @classmethod
    def _distinct(cls, targets):
        names = [target_name(t.data) for t in targets]
        if not targets or len(set(names)) < len(names):
            raise ValueError(f"expected one or more distinct target sets, got {names}")
        return targets


# --quick: what a config file does not set itself (under 10 minutes on the 2-core development CPU, see
# docs/medvqa.md): one pass over captions and general VQA, and as many fine-tuning epochs as fit, since the answers
# that depend on the image keep improving with them (SLAKE closed questions: 8 epochs < 12 < 16).
QUICK = {"options": {"num_queries": 8}, "caption": {"epochs": 1}, "vqa": {"epochs": 1},
         "targets": [{"data": "vqa-rad", "epochs": 8}, {"data": "slake", "epochs": 16}]}


def merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``, nested dictionaries merged key by key (lists replaced whole)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def target_name(data: str) -> str:
    """'vqa-rad', 'slake', or a folder's name: the target's key in metrics.json and its run's suffix."""
    key = vqa_data.set_key(str(data))
    return key if key in vqa_data.VQA_SETS else vqa_data.set_key(Path(data).name)


def stage_data(stage: str, sd: StageData, root) -> tuple[str, str | None]:
    """The stage's data (the config's, else the paper's set where present, else its substitute) and a note that
    says what replaced the paper's set (None when nothing did)."""
    if sd.data is not None:
        return sd.data, None
    paper, substitute = PAPER_SETS[stage]
    try:
        vqa_data.set_folder(paper, root)
        return paper, None
    except MedvtabError:
        return substitute, (f"{stage}: {paper} (the paper's set) not found under the data root; in its place: "
                            f"{substitute}")


def held_out_of(cfg: PipelineConfig) -> tuple[str, ...]:
    """VQA-RAD's and SLAKE's test splits and every target's: no stage trains on their images."""
    return tuple(dict.fromkeys([*HELD_OUT, *(f"{t.data}:{t.test_split}" for t in cfg.targets)]))


def plan(cfg: PipelineConfig, on_note: Note = print) -> list[dict]:
    """The stages in order: name (the run's folder), stage, data, split, epochs, init (the folder it continues)."""
    steps, init = [], None
    for stage, sd in (("caption", cfg.caption), ("vqa", cfg.vqa)):
        data, replaced = stage_data(stage, sd, cfg.data_root)
        if replaced:
            on_note(replaced)
        steps.append({"name": stage, "stage": stage, "data": data, "split": sd.split, "epochs": sd.epochs,
                      "init": init, "substitute_for": PAPER_SETS[stage][0] if replaced else None})
        init = stage
    for t in cfg.targets:
        steps.append({"name": f"finetune-{target_name(t.data)}", "stage": "finetune", "data": t.data,
                      "split": t.split, "epochs": t.epochs, "init": "vqa", "substitute_for": None})
    return steps


def run_pipeline(cfg: PipelineConfig, out: Path, on_note: Note = print) -> dict | None:
    """caption -> vqa -> finetune-<target> for each target into ``out``, then each target evaluated on its test
    split (``out/finetune-<target>/metrics.json``); ``out/metrics.json`` holds one object per target and the
    protocol, ``out/summary.md`` the tables. A new tiny LM's tokenizer learns the text of every training stage.
    ``options.devices`` > 1: the stages train on that many processes (launched once); global rank 0 alone
    evaluates and gets the metrics, the others get None."""
    out = Path(out)
    check_new_run_dir(out)
    start = time.perf_counter()
    fabric = launch(cfg.options)
    if fabric is not None and fabric.global_rank != 0:
        on_note = lambda message: None  # noqa: E731
    steps, held_out = plan(cfg, on_note), held_out_of(cfg)
    vocab = []
    if cfg.options.lm == TINY:
        for s in steps:
            vocab += texts_of(load_stage_items(s["stage"], s["data"], s["split"], cfg.options, cfg.data_root,
                                               held_out, on_note=lambda _: None)[0])
    configs = {}
    for s in steps:
        opts = cfg.options.model_copy(update={"epochs": s["epochs"]})
        configs[s["name"]] = train_stage(s["stage"], s["data"], out / s["name"], opts, split=s["split"],
                                         init=None if s["init"] is None else out / s["init"], root=cfg.data_root,
                                         vocab_texts=vocab, held_out=held_out, on_note=on_note, fabric=fabric)
    if fabric is not None and fabric.global_rank != 0:
        return None
    targets = {}
    for t, s in zip(cfg.targets, steps[2:]):
        targets[target_name(t.data)] = evaluate(out / s["name"], t.data, t.test_split, root=cfg.data_root,
                                                limit=t.limit, on_note=on_note, device=cfg.options.device)
    protocol = [{**s, **{k: configs[s["name"]][k] for k in ("items", "dropped_leaked", "held_out",
                                                             "own_test_images_in_train", "train_seconds")}}
                for s in steps]
    summary = {"targets": targets, "protocol": protocol, "seconds": round(time.perf_counter() - start, 1)}
    write_json(out / METRICS, summary)
    atomic_write(out / SUMMARY, lambda tmp: Path(tmp).write_text(report(summary) + "\n"))
    return summary


def report(summary: dict) -> str:
    """The protocol in a few lines, the targets side by side, then each target's question types (Markdown)."""
    lines = []
    for s in summary["protocol"]:
        line = (f"- {s['name']}: {s['data']} ({s['split']}), {s['items']} items, {s['epochs']} epoch(s), "
                f"{s['train_seconds']:.0f} s")
        if s["substitute_for"]:
            line += f"; in place of {s['substitute_for']}, which is absent"
        if s["dropped_leaked"]:
            line += f"; {s['dropped_leaked']} item(s) dropped whose image is a test image ({', '.join(s['held_out'])})"
        if s["own_test_images_in_train"]:
            line += (f"; {s['own_test_images_in_train']} of its training images are also test images of the same "
                     f"set, under other questions (the official split is by question)")
        lines.append(line)
    tables = [question_types(name, m) for name, m in summary["targets"].items()]
    return "\n".join(lines) + "\n\n" + side_by_side(summary["targets"]) + "\n\n" + "\n\n".join(tables)
