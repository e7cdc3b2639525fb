"""The fusion model: an hf: Bloom with LoRA takes a training step, loss masking, restricted decoding, the
trainable state round trip, and a DynaMer pair as the vision side."""

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from medvtab.errors import MedvtabError
from medvtab.vqa import data as vqa_data
from medvtab.vqa.lm import build_tokenizer, load_base
from medvtab.vqa.model import IGNORE, QFormerConfig, VQAModel, collate, encode_text, question_prompt
from medvtab.vqa.evaluate import predict
from medvtab.vqa.train import StageOptions, base_lm, build_model, image_features, sequences, texts_of
from medvtab.vqa.vision import load_vision

SMALL = QFormerConfig(num_queries=4, hidden=32, layers=1, heads=2)


@pytest.fixture(scope="module")
def rad_items():
    """Two real VQA-RAD train items (one closed, one open) from the shared data."""
    try:
        items = vqa_data.load_vqa("vqa-rad", "train")
    except MedvtabError as err:
        pytest.skip(f"VQA-RAD not available ({err})")
    return [next(i for i in items if i.answer_type == "closed"), next(i for i in items if i.answer_type == "open")]


@pytest.fixture(scope="module")
def hf_bloom(tmp_path_factory, rad_items):
    """A random-weight Bloom (small config) and a tokenizer saved as a local checkpoint folder."""
    from transformers import BloomConfig, BloomForCausalLM

    tokenizer = build_tokenizer(texts_of(rad_items) + ["yes no left right"])
    torch.manual_seed(0)
    model = BloomForCausalLM(BloomConfig(vocab_size=len(tokenizer), hidden_size=32, n_layer=2, n_head=2,
                                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                         eos_token_id=tokenizer.eos_token_id))
    path = tmp_path_factory.mktemp("bloom")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def features(rad_items):
    return image_features(load_vision("tiny-medical"), rad_items)


def _model(hf_bloom, vision_width, seed=0):
    opts = StageOptions(lm=f"hf:{hf_bloom}", fusion="qformer", num_queries=SMALL.num_queries,
                        qformer_hidden=SMALL.hidden, qformer_layers=SMALL.layers, qformer_heads=SMALL.heads)
    lm, tokenizer = base_lm(opts, None, None)
    torch.manual_seed(seed)
    return build_model(opts, lm, vision_width), tokenizer


def test_hf_bloom_with_lora_trains_only_fusion_and_adapters(hf_bloom, rad_items, features):
    feats, rows = features
    model, tokenizer = _model(hf_bloom, feats.shape[-1])
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainable = {k for k, v in model.named_parameters() if v.requires_grad}
    assert trainable and all(k.startswith(("qformer.", "query_tokens", "project.")) or "lora_" in k
                             for k in trainable)
    assert any("query_key_value.lora_B" in k for k in trainable)  # peft's default targets for Bloom

    ids, mask, labels = collate(sequences(rad_items, tokenizer), tokenizer.pad_token_id)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # the projection starts at zero: the Q-Former's gradient flows from the second step on
        optimizer.zero_grad()
        model(feats[rows], ids, mask, labels).loss.backward()
        optimizer.step()

    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert changed <= trainable
    assert any(k.startswith("qformer.") for k in changed) and "project.weight" in changed
    assert any("lora_B" in k for k in changed)
    base = [k for k in before if k not in trainable]
    assert base and all(torch.equal(dict(model.named_parameters())[k], before[k]) for k in base)


def test_loss_is_on_answer_tokens_only(hf_bloom, rad_items, features):
    feats, rows = features
    model, tokenizer = _model(hf_bloom, feats.shape[-1])
    item = rad_items[0]
    ids, n_prompt = encode_text(tokenizer, question_prompt(item.question), item.answer)
    answer = tokenizer(" " + item.answer, add_special_tokens=False)["input_ids"]
    assert ids[n_prompt:] == answer + [tokenizer.eos_token_id]
    input_ids, mask, labels = collate([(ids, n_prompt), ([1, 2, 3], 2)], tokenizer.pad_token_id)
    assert labels[0, :n_prompt].eq(IGNORE).all() and labels[0, n_prompt:len(ids)].tolist() == ids[n_prompt:]
    assert labels[1].tolist() == [IGNORE, IGNORE, 3] + [IGNORE] * (len(ids) - 3)  # padding never counts

    model.eval()
    with torch.no_grad():
        out = model(feats[rows[:2]], input_ids, mask, labels)
    q = model.num_queries
    logits = out.logits[0, q + n_prompt - 1:q + len(ids) - 1]  # the positions that predict the answer
    manual = F.cross_entropy(logits, torch.tensor(ids[n_prompt:]), reduction="sum")
    manual = (manual + F.cross_entropy(out.logits[1, q + 1], torch.tensor(3), reduction="sum")) / (len(answer) + 2)
    assert out.loss.item() == pytest.approx(manual.item(), rel=1e-5)


def test_restricted_decoding_picks_the_best_scoring_candidate(hf_bloom, rad_items, features):
    feats, rows = features
    model, tokenizer = _model(hf_bloom, feats.shape[-1])
    model.eval()
    candidates = ["yes", "no", "left", "right"]
    closed = [rad_items[0], rad_items[0]]
    prompt = encode_text(tokenizer, question_prompt(closed[0].question))[0]
    cand_ids = [tokenizer(" " + c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                for c in candidates]
    scores = model.score_candidates(feats[rows[:1]], [prompt], cand_ids, tokenizer.pad_token_id)[0]
    for c, want in zip(cand_ids, scores):  # each score is the candidate's summed log-likelihood
        ids, mask, labels = collate([(prompt + c, len(prompt))], tokenizer.pad_token_id)
        with torch.no_grad():
            logits = model(feats[rows[:1]], ids, mask).logits[0, model.num_queries:]
        logp = F.log_softmax(logits[:-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        assert want.item() == pytest.approx(logp[len(prompt) - 1:].sum().item(), abs=1e-4)
    best = candidates[int(scores.argmax())]
    picked = predict(model, tokenizer, feats, torch.cat([rows[:1], rows[:1]]), closed, candidates)[1]  # restricted
    assert picked == [best, best]


def test_trainable_state_round_trip_gives_identical_logits(hf_bloom, rad_items, features, tmp_path):
    from medvtab.engine.rundir import read_tensors, write_tensors

    feats, rows = features
    model, tokenizer = _model(hf_bloom, feats.shape[-1], seed=0)
    with torch.no_grad():
        for p in model.trainable_state_dict().values():
            p.add_(torch.randn_like(p) * 0.1)  # LoRA B starts at zero: make every tensor count
    write_tensors(tmp_path / "trainable.safetensors", model.trainable_state_dict())
    other, _ = _model(hf_bloom, feats.shape[-1], seed=1)
    ids, mask, _ = collate(sequences(rad_items, tokenizer), tokenizer.pad_token_id)
    model.eval(), other.eval()
    with torch.no_grad():
        assert not torch.equal(model(feats[rows], ids, mask).logits, other(feats[rows], ids, mask).logits)
        other.load_trainable_state_dict(read_tensors(tmp_path / "trainable.safetensors"), "file")
        assert torch.equal(model(feats[rows], ids, mask).logits, other(feats[rows], ids, mask).logits)
    state = model.trainable_state_dict()
    state.pop("project.weight")
    with pytest.raises(MedvtabError, match="missing: project.weight"):
        other.load_trainable_state_dict(state, "file")


def test_image_blind_model_has_no_queries(hf_bloom, rad_items):
    model, tokenizer = _model(hf_bloom, None)
    assert model.num_queries == 0 and model.prefix(None) is None
    assert all("lora_" in k for k in model.trainable_state_dict())
    ids, mask, labels = collate(sequences(rad_items, tokenizer), tokenizer.pad_token_id)
    assert model(None, ids, mask, labels).logits.shape[1] == ids.shape[1]


def test_hf_spec_errors_are_one_line(tmp_path):
    with pytest.raises(MedvtabError, match="not found"):
        load_base(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    with pytest.raises(MedvtabError, match="not a transformers causal LM"):
        load_base(tmp_path / "junk")


def test_dynamer_run_as_vision_side(small_task, tmp_path, rad_items):
    from medvtab.cli import app

    run = tmp_path / "dynamer"
    result = CliRunner().invoke(app, ["train", "--task", str(small_task), "--method", "dynamer", "--general",
                                      "tiny-general", "--medical", "tiny-medical", "--epochs", "1",
                                      "--train-size", "64", "--out", str(run)])
    assert result.exit_code == 0, result.output
    encoder = load_vision(f"dynamer:{run}")
    assert (encoder.width, encoder.num_tokens, encoder.input_size) == (192, 50, 28)
    images = vqa_data.load_images([i.image for i in rad_items], encoder.input_size)
    tokens = encoder.encode(images, batch_size=1)
    assert tokens.shape == (2, 50, 192) and not tokens.requires_grad
    # batching does not change the tokens beyond the last bits (kernels differ by batch size on some CPUs)
    assert torch.allclose(tokens, encoder.encode(images), rtol=1e-5, atol=1e-5)
    with pytest.raises(MedvtabError, match="keeps its input size"):
        load_vision(f"dynamer:{run}", img_size=56)
    with pytest.raises(MedvtabError, match="not a run directory"):
        load_vision(f"dynamer:{tmp_path / 'nope'}")
    # a stage trains and a run answers with the DynaMer pair as its vision side
    from medvtab.vqa.evaluate import evaluate
    from medvtab.vqa.train import train_stage

    opts = StageOptions(vision=f"dynamer:{run}", num_queries=4, epochs=1, limit=12)
    config = train_stage("finetune", "vqa-rad", tmp_path / "vqa", opts, on_note=lambda _: None)
    assert (config["vision_width"], config["vision_tokens"]) == (192, 17)  # pooled 2x2 by default
    metrics = evaluate(tmp_path / "vqa", "vqa-rad", "test", limit=8, on_note=lambda _: None)
    assert metrics["vision"] == f"dynamer:{run}" and metrics["n"] == 8


def test_the_mlp_fusion_maps_every_vision_token(hf_bloom, rad_items, features):
    feats, rows = features
    opts = StageOptions(lm=f"hf:{hf_bloom}", fusion="mlp")
    lm, tokenizer = base_lm(opts, None, None)
    model = build_model(opts, lm, feats.shape[-1])
    assert model.qformer is None and {k.split(".")[0] for k, v in model.named_parameters()
                                      if v.requires_grad and "lora_" not in k} == {"project"}
    prefix = model.prefix(feats[rows])
    assert prefix.shape == (len(rows), feats.shape[1], 32)  # one prefix token per vision token, the LM's width
    assert not torch.allclose(prefix[0], prefix[1])  # two images, two prefixes
    ids, mask, labels = collate(sequences(rad_items, tokenizer), tokenizer.pad_token_id)
    out = model(feats[rows], ids, mask, labels)
    assert out.logits.shape[1] == feats.shape[1] + ids.shape[1] and torch.isfinite(out.loss)
    with pytest.raises(MedvtabError, match="unknown fusion 'linear'"):
        VQAModel(lm, 96, fusion="linear")


def test_token_pooling_averages_the_patch_grid_and_keeps_cls(rad_items):
    """tiny-radiology's 8x8 grid pooled 2x2: CLS as it was, each of the 16 tokens the mean of its four patches;
    tiny-general's 7x7 grid pooled 2x2 has a ragged last row and column (4x4 tokens)."""
    images = vqa_data.load_images([i.image for i in rad_items], 64)
    full, pooled = load_vision("tiny-radiology").encode(images), load_vision("tiny-radiology", pool=2).encode(images)
    assert full.shape == (2, 65, 96) and pooled.shape == (2, 17, 96)
    assert torch.equal(pooled[:, 0], full[:, 0])
    grid = full[:, 1:].reshape(2, 8, 8, 96)
    assert torch.allclose(pooled[:, 1], grid[:, :2, :2].mean((1, 2)), atol=1e-6)
    assert torch.allclose(pooled[:, -1], grid[:, 6:, 6:].mean((1, 2)), atol=1e-6)
    ragged = load_vision("tiny-general", pool=2)
    assert ragged.pooled_grid == (4, 4) and ragged.num_tokens == 17
    assert ragged.encode(vqa_data.load_images([i.image for i in rad_items], 28)).shape == (2, 17, 96)
