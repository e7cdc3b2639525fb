"""The language side: a frozen causal LM with LoRA adapters on its attention projections, and its tokenizer.

``hf:PATH``: any causal LM transformers loads from a local folder (a Bloomz or RadBloomz checkpoint for real use;
nothing is downloaded). ``tiny``: a small random-init Bloom whose word-level tokenizer is built from the training
text, for laptops and tests. Its random weights and tokenizer are saved with the first run
(:func:`save_base`), so later stages and evaluation reload exactly the same language model.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medvtab.errors import MedvtabError
from medvtab.extras import require

TINY = "tiny"
HF_PREFIX = "hf:"
TINY_ARCH = dict(hidden_size=128, n_layer=2, n_head=4)
TINY_SEED = 0
# The tiny LM's tied input/output embeddings are drawn at this scale rather than Bloom's 0.02: frozen output
# embeddings of norm ~0.2 cap every logit near +-2.5, so no answer token could ever become likely (the loss stalls
# near log(vocab)). The input side is unaffected: Bloom layer-norms the embeddings first.
TINY_EMBED_STD = 0.1
# LoRA targets of the tiny LM: every linear layer. Attention projections alone (peft's default, right for a
# pre-trained LM) leave a random frozen LM unable to learn even the answer vocabulary: their output passes a
# random frozen projection that shrinks it five-fold.
TINY_LORA_TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
PROMPT_WORDS = "Question: Answer: Caption:"  # always in the tiny vocabulary
SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def check_spec(spec: str) -> None:
    if spec != TINY and not (spec.startswith(HF_PREFIX) and len(spec) > len(HF_PREFIX)):
        raise MedvtabError(f"unknown language model spec '{spec}'; expected 'tiny' or 'hf:PATH' (a local folder "
                           f"holding a transformers causal LM and its tokenizer)")


def build_tokenizer(texts: list[str], max_vocab: int = 8000):
    """A word-level tokenizer over lowercased words and punctuation of ``texts``: every training word is one
    token, so a tiny LM needs no sub-word modelling to spell an answer."""
    # the optional extra medvtab[vqa], imported once required
    require("transformers", extra="vqa", feature="MedVQA")  # and tokenizers, which it depends on
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel(unk_token=SPECIAL["unk_token"]))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, no space before punctuation
    trainer = WordLevelTrainer(vocab_size=max_vocab, special_tokens=list(SPECIAL.values()))
    tok.train_from_iterator([PROMPT_WORDS, *texts], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)


def build_tiny(texts: list[str]):
    """The tiny random-init Bloom (seeded, without touching the global RNG) and its tokenizer built from ``texts``."""
    require("transformers", extra="vqa", feature="MedVQA")  # optional extra: imported once required
    from transformers import BloomConfig, BloomForCausalLM

    tokenizer = build_tokenizer(texts)
    config = BloomConfig(vocab_size=len(tokenizer), **TINY_ARCH, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = BloomForCausalLM(config)
        torch.nn.init.normal_(model.get_input_embeddings().weight, std=TINY_EMBED_STD)
    return model, tokenizer


def load_base(path: Path):
    """A causal LM and its tokenizer from a local folder, strictly offline."""
    require("transformers", extra="vqa", feature="MedVQA")  # optional extra: imported once required
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise MedvtabError(f"language model folder {path}: not found")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MedvtabError(f"language model folder {path}: not a transformers causal LM with its tokenizer "
                           f"({first})") from None
    if tokenizer.pad_token_id is None:  # many causal LMs ship without one; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def save_base(model, tokenizer, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def add_lora(model, r: int = 8, targets: list[str] | None = None, alpha: int | None = None,
             train_embeddings: bool = False) -> nn.Module:
    """Freeze ``model`` and wrap it with LoRA adapters (peft): ``targets`` names the projections; without them
    peft's table of attention projections for known model types (Bloom ``query_key_value``, Llama ``q_proj`` and
    ``v_proj``, ...) decides. ``train_embeddings``: the input embeddings (and an output layer tied to them) train
    too: for a random-init LM, which knows no words."""
    from peft import LoraConfig, get_peft_model

    model.requires_grad_(False)
    config = LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=0.0, target_modules=targets,
                        task_type="CAUSAL_LM")
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as err:
        kind = getattr(model.config, "model_type", type(model).__name__)
        hint = "" if targets else " (peft knows no default for this model type: give --lora-targets)"
        raise MedvtabError(f"LoRA on a '{kind}' model: {str(err).splitlines()[0]}{hint}") from None
    if train_embeddings:
        wrapped.get_input_embeddings().weight.requires_grad_(True)
    return wrapped
