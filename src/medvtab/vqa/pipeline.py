"""The three-stage MedVQA pipeline from one config: caption -> general medical VQA -> fine-tuning, then the
evaluation (each stage continues the last)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from medvtab.engine.rundir import check_new_run_dir
from medvtab.vqa.lm import TINY
from medvtab.vqa.train import Note, StageOptions, evaluate, launch, load_stage_items, texts_of, train_stage


class StageData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: str
    split: str = "train"
    epochs: int = Field(ge=1)


class EvalData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: str = "vqa-rad"
    split: str = "test"
    closed_candidates: bool = True


class PipelineConfig(BaseModel):
    """Three stages and the evaluation from one file: ``options`` are shared (each stage continues the last),
    the stages set their data and epochs."""
    model_config = ConfigDict(extra="forbid")
    options: StageOptions = StageOptions()
    caption: StageData = StageData(data="medpix", epochs=2)
    vqa: StageData = StageData(data="slake", epochs=3)
    finetune: StageData = StageData(data="vqa-rad", epochs=15)
    eval: EvalData = EvalData()
    data_root: Optional[str] = None


# --quick: what a config file does not set itself. Measured on the 2-core development CPU (see docs/medvqa.md):
# fewer queries and one pass over captions and SLAKE; the finetune stage keeps enough epochs for the fused model to
# learn closed answers beyond the majority.
QUICK = {"options": {"num_queries": 8}, "caption": {"data": "medpix", "epochs": 1},
         "vqa": {"data": "slake", "epochs": 1}, "finetune": {"data": "vqa-rad", "epochs": 8}}


def merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``, nested dictionaries merged key by key."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def run_pipeline(cfg: PipelineConfig, out: Path, on_note: Note = print) -> dict | None:
    """caption -> vqa -> finetune into ``out``/{caption,vqa,finetune}, each from the last, then the evaluation
    (``out/finetune/metrics.json``). A new tiny LM's tokenizer learns the text of all three training sets.
    ``options.devices`` > 1: the stages train on that many processes (launched once); global rank 0 alone
    evaluates and gets the metrics, the others get None."""
    out = Path(out)
    check_new_run_dir(out)
    fabric = launch(cfg.options)
    if fabric is not None and fabric.global_rank != 0:
        on_note = lambda message: None  # noqa: E731
    stages = (("caption", cfg.caption), ("vqa", cfg.vqa), ("finetune", cfg.finetune))
    vocab = []
    if cfg.options.lm == TINY:
        for stage, sd in stages:
            vocab += texts_of(load_stage_items(stage, sd.data, sd.split, cfg.options, cfg.data_root,
                                               on_note=lambda _: None)[0])
    init = None
    for stage, sd in stages:
        opts = cfg.options.model_copy(update={"epochs": sd.epochs})
        train_stage(stage, sd.data, out / stage, opts, split=sd.split, init=init, root=cfg.data_root,
                    vocab_texts=vocab, on_note=on_note, fabric=fabric)
        init = out / stage
    if fabric is not None and fabric.global_rank != 0:
        return None
    return evaluate(init, cfg.eval.data, cfg.eval.split, closed_candidates=cfg.eval.closed_candidates,
                    root=cfg.data_root, on_note=on_note, device=cfg.options.device)
