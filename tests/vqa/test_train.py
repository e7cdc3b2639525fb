"""The three stages end to end on small subsets of the shared data, each loading the last, and the evaluation."""
import json

import pytest

from medvtab.errors import MedvtabError
from medvtab.vqa import data as vqa_data
from medvtab.vqa.evaluate import evaluate, shuffled_rows
from medvtab.vqa.train import StageOptions, read_config, sources, texts_of, train_stage

TINY = dict(num_queries=4, qformer_hidden=32, qformer_layers=1, qformer_heads=2, epochs=1, batch_size=8, limit=16)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """caption (MedPix) -> vqa (SLAKE) -> finetune (VQA-RAD), 16 items each, the tokenizer from all three."""
    try:
        sets = [vqa_data.load_captions("medpix", "train")[:16], vqa_data.load_vqa("slake", "train")[:16],
                vqa_data.load_vqa("vqa-rad", "train")[:16]]
    except MedvtabError as err:
        pytest.skip(f"shared MedVQA data not available ({err})")
    vocab = [t for items in sets for t in texts_of(items)]
    root = tmp_path_factory.mktemp("vqa")
    opts = StageOptions(**TINY)
    configs, init = {}, None
    for stage, data in (("caption", "medpix"), ("vqa", "slake"), ("finetune", "vqa-rad")):
        configs[stage] = train_stage(stage, data, root / stage, opts, init=init, vocab_texts=vocab,
                                     on_note=lambda _: None)
        init = root / stage
    return root, configs


def test_each_stage_continues_the_last(chain):
    root, configs = chain
    for stage in ("caption", "vqa", "finetune"):
        run = root / stage
        assert {"config.json", "trainable.safetensors", "log.csv", "lm"} <= {p.name for p in run.iterdir()}
        assert read_config(run) == configs[stage]
    assert configs["caption"]["init"] is None and configs["caption"]["lineage"] == []
    assert configs["caption"]["held_out"] == configs["vqa"]["held_out"] == ["vqa-rad:test", "slake:test"]
    assert configs["finetune"]["held_out"] == ["slake:test"]  # VQA-RAD's own test images are train images too
    assert configs["finetune"]["lineage"] == [str((root / "caption").resolve()), str((root / "vqa").resolve())]
    assert len({c["vocab_size"] for c in configs.values()}) == 1  # one tokenizer through the pipeline
    assert all(c["items"] == 16 and c["vision_width"] == 96 for c in configs.values())


def test_a_stage_refuses_a_different_model_than_its_init(chain, tmp_path):
    root, _ = chain
    opts = StageOptions(**dict(TINY, vision="tiny-medical"))
    with pytest.raises(MedvtabError, match="option 'vision': the --init run was trained with 'tiny-radiology'"):
        train_stage("finetune", "vqa-rad", tmp_path / "x", opts, init=root / "vqa", given={"vision"})
    with pytest.raises(MedvtabError, match="output directory exists"):
        train_stage("finetune", "vqa-rad", root / "vqa", StageOptions(**TINY), init=root / "caption")
    with pytest.raises(MedvtabError, match="expected one of caption, vqa, finetune"):
        train_stage("pretrain", "vqa-rad", tmp_path / "y", StageOptions(**TINY))


def test_evaluate_writes_answers_and_metrics_with_baselines(chain, tmp_path):
    root, _ = chain
    metrics = evaluate(root / "finetune", "vqa-rad", "test", out=tmp_path / "eval", limit=24,
                       on_note=lambda _: None)
    rows = [json.loads(line) for line in (tmp_path / "eval" / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and set(rows[0]) == {"qid", "question", "answer_type", "question_type", "gold",
                                                "prediction", "correct", "restricted", "shuffled_image",
                                                "image_blind"}
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    keys = ("closed_accuracy", "open_accuracy", "overall_accuracy")
    b = metrics["baselines"]
    for m in (metrics, metrics["restricted"], b["majority"], b["image_blind"], b["image_blind"]["restricted"],
              b["shuffled_image"], b["shuffled_image"]["restricted"]):
        assert all(k in m for k in keys) and m["n"] == 24
    closed = [r for r in rows if r["answer_type"] == "closed"]
    assert metrics["closed_accuracy"] == pytest.approx(sum(r["correct"] for r in closed) / len(closed))
    assert metrics["decoding"] == "free generation (greedy)" and metrics["paper"] == {"overall_accuracy": 0.732}
    candidates = set(vqa_data.closed_candidates(vqa_data.load_vqa("vqa-rad", "train")[:16]))
    assert {r["restricted"] for r in closed} <= candidates  # restricted decoding, closed questions only
    assert all(r["restricted"] == r["prediction"] for r in rows if r["answer_type"] == "open")
    assert metrics["lineage"][-1] == str((root / "finetune").resolve())
    with pytest.raises(MedvtabError, match="caption stage run answers no questions"):
        evaluate(root / "caption", "vqa-rad", "test", limit=4)


def test_the_image_blind_baseline_starts_from_the_same_weights_in_any_process(chain, monkeypatch):
    """Its LoRA weights are drawn after seeding: random numbers drawn before (other work in the same process)
    change nothing, so `vqa eval` and the pipeline's evaluation give the same baseline."""
    import torch

    import medvtab.vqa.evaluate as vqa_evaluate
    from medvtab.vqa.evaluate import image_blind_model

    starts, fit = [], vqa_evaluate.fit

    def recording_fit(model, *args, **kwargs):
        starts.append({k: v.clone() for k, v in model.trainable_state_dict().items()})
        return fit(model, *args, **kwargs)

    monkeypatch.setattr(vqa_evaluate, "fit", recording_fit)
    items = vqa_data.load_vqa("vqa-rad", "train")[:4]
    for draws in (0, 1000):
        torch.rand(draws)  # what ran before
        image_blind_model(chain[0] / "finetune", items, lambda _: None)
    assert starts[0].keys() == starts[1].keys()
    assert all(torch.equal(starts[0][k], starts[1][k]) for k in starts[0])


def test_shuffled_rows_give_each_question_another_image_of_the_split():
    import torch

    rows = torch.tensor([0, 0, 1, 2, 2, 2, 3, 1] * 50)
    shuffled = shuffled_rows(rows, seed=0)
    assert torch.equal(shuffled, shuffled_rows(rows, seed=0)) and not torch.equal(shuffled, shuffled_rows(rows, 1))
    assert (shuffled != rows).all() and set(shuffled.tolist()) == {0, 1, 2, 3}
    with pytest.raises(MedvtabError, match="at least two distinct images"):
        shuffled_rows(torch.zeros(5, dtype=torch.long), seed=0)


def test_sources_of_a_stage():
    assert sources("vqa-rad", "train") == [("vqa-rad", "train")]
    assert sources("slake:train+slake:val+vqa-rad", "test") == [("slake", "train"), ("slake", "val"),
                                                                ("vqa-rad", "test")]
    assert sources("C:\\data\\slake", "train") == [("C:\\data\\slake", "train")]


def test_a_run_from_before_the_fusion_option_is_a_qformer_run(chain, tmp_path):
    config = json.loads((chain[0] / "finetune" / "config.json").read_text())
    assert config["options"]["fusion"] == "mlp"  # the default now
    del config["options"]["fusion"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert read_config(tmp_path)["options"]["fusion"] == "qformer"
