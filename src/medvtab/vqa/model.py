"""The fusion model: vision tokens -> Q-Former queries -> the language model's embedding space (BLIP-2 style).

The language model sees ``[query tokens] <bos> Question: ... Answer: <answer> <eos>`` and learns the answer tokens
only (labels are -100 on the queries, the prompt and padding). Trainable: the Q-Former, its learned queries, the
projection and the LoRA adapters; the LM itself and the vision encoder stay frozen. Without a vision side
(``vision_width=None``) the same LM answers from the question alone: the image-blind reference.

The module works on cached vision tokens and token ids; :func:`encode_text` and :func:`collate` turn text into
those ids, and nothing here knows about training loops.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medvtab.errors import MedvtabError

IGNORE = -100  # label value cross-entropy skips


def question_prompt(question: str) -> str:
    return f"Question: {question} Answer:"


CAPTION_PROMPT = "Caption:"


@dataclass(frozen=True)
class QFormerConfig:
    """The fusion's size; the defaults are the tiny one (BLIP-2 uses 768 wide, 12 layers, 12 heads)."""
    num_queries: int = 32
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1  # BLIP-2's; per-process masks make multi-process runs differ beyond float order


def encode_text(tokenizer, prompt: str, target: str | None = None, max_prompt: int = 64,
                max_target: int = 32) -> tuple[list[int], int]:
    """Token ids of ``<bos> prompt [target <eos>]`` and how many of them are prompt (these get no loss).
    Prompt and target are tokenized apart, so the boundary is exact; both are truncated (the target before its
    end-of-sequence token, so a truncated caption still ends)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = bos + tokenizer(prompt, add_special_tokens=False)["input_ids"][:max_prompt]
    if target is None:
        return ids, len(ids)
    answer = tokenizer(" " + target, add_special_tokens=False)["input_ids"][:max_target]
    return ids + answer + [tokenizer.eos_token_id], len(ids)


def collate(sequences: list[tuple[list[int], int]], pad_id: int, left: bool = False):
    """Padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and padding). ``left``: pad on the
    left, so every prompt ends at the last position (for generation)."""
    width = max(len(ids) for ids, _ in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE, dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(sequences):
        start = width - len(ids) if left else 0
        span = slice(start, start + len(ids))
        input_ids[row, span] = torch.tensor(ids)
        mask[row, span] = 1
        labels[row, start + n_prompt:start + len(ids)] = torch.tensor(ids[n_prompt:], dtype=torch.long)
    return input_ids, mask, labels


FUSIONS = ("qformer", "mlp")


class VQAModel(nn.Module):
    """The fusion in front of a (LoRA-wrapped, frozen) causal LM: a Q-Former and a projection (the paper's, BLIP-2's),
    or ``fusion="mlp"``: a two-layer MLP that maps every vision token into the LM's space (LLaVA's projector).

    ``lm``: a peft-wrapped causal LM (:func:`medvtab.vqa.lm.add_lora`); ``vision_width``: the vision tokens'
    width, or None for the image-blind model (no prefix)."""

    def __init__(self, lm: nn.Module, vision_width: int | None, qformer: QFormerConfig = QFormerConfig(),
                 fusion: str = "qformer"):
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel  # optional extra medvtab[vqa]

        if fusion not in FUSIONS:
            raise MedvtabError(f"unknown fusion '{fusion}' (expected one of: {', '.join(FUSIONS)})")
        self.lm = lm
        self.vision_width = vision_width
        self.qformer_config = qformer
        self.fusion = fusion
        self.qformer = self.query_tokens = self.project = None
        if vision_width is None:
            return
        width = lm.get_input_embeddings().embedding_dim
        if fusion == "mlp":
            # Default (not zero) initialisation: measured on SLAKE, this path carries the image from the first
            # epochs (docs/medvqa.md), where the tiny Q-Former's pooled queries had not yet learned to.
            self.project = nn.Sequential(nn.Linear(vision_width, width), nn.GELU(), nn.Linear(width, width))
            return
        config = Blip2QFormerConfig(hidden_size=qformer.hidden, num_hidden_layers=qformer.layers,
                                    num_attention_heads=qformer.heads, intermediate_size=4 * qformer.hidden,
                                    encoder_hidden_size=vision_width, cross_attention_frequency=1,
                                    hidden_dropout_prob=qformer.dropout,
                                    attention_probs_dropout_prob=qformer.dropout)
        self.qformer = Blip2QFormerModel(config)
        self.query_tokens = nn.Parameter(torch.randn(1, qformer.num_queries, qformer.hidden) * 0.02)
        # Zero-initialised, so training starts from the image-blind model (the queries carry nothing yet) instead
        # of random query embeddings that disturb a frozen LM before the fusion has learned anything.
        self.project = nn.Linear(qformer.hidden, width)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    @property
    def num_queries(self) -> int:
        """The Q-Former's queries: the prefix length (0 when blind; the MLP fusion's prefix is every vision token)."""
        return 0 if self.query_tokens is None else self.query_tokens.shape[1]

    def prefix(self, features: torch.Tensor | None) -> torch.Tensor | None:
        """Vision tokens ``(B, N, D)`` -> the prefix in the LM's space: ``(B, Q, E)`` query embeddings, or
        ``(B, N, E)`` for the MLP fusion (None when blind)."""
        if self.vision_width is None:
            return None
        if self.qformer is None:
            return self.project(features)
        queries = self.query_tokens.expand(features.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=features).last_hidden_state
        return self.project(out)

    def _inputs(self, prefix: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None):
        """The LM's ``inputs_embeds``, mask and labels with the query tokens in front."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        if prefix is None:
            return embeds, attention_mask, labels
        b, q = prefix.shape[:2]
        embeds = torch.cat([prefix.to(embeds.dtype), embeds], dim=1)
        attention_mask = torch.cat([attention_mask.new_ones(b, q), attention_mask], dim=1)
        if labels is not None:
            labels = torch.cat([labels.new_full((b, q), IGNORE), labels], dim=1)
        return embeds, attention_mask, labels

    def forward(self, features: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None):
        """The LM's output (``.logits`` over queries + text, and ``.loss`` on the labelled tokens when given)."""
        embeds, mask, labels = self._inputs(self.prefix(features), input_ids, attention_mask, labels)
        return self.lm(inputs_embeds=embeds, attention_mask=mask, labels=labels)

    @torch.no_grad()
    def generate(self, features: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 eos_id: int, pad_id: int, max_new_tokens: int = 10) -> list[list[int]]:
        """Greedy answers to left-padded prompts, each cut at its end-of-sequence token."""
        embeds, mask, _ = self._inputs(self.prefix(features), input_ids, attention_mask)
        out = self.lm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                               do_sample=False, num_beams=1, eos_token_id=eos_id, pad_token_id=pad_id)
        answers = []
        for row in out.tolist():  # only new tokens come back when generating from embeddings
            answers.append(row[:row.index(eos_id)] if eos_id in row else row)
        return answers

    @torch.no_grad()
    def score_candidates(self, features: torch.Tensor | None, prompts: list[list[int]],
                         candidates: list[list[int]], pad_id: int, chunk: int = 64) -> torch.Tensor:
        """Summed log-likelihood ``(B, C)`` of every candidate answer (its tokens and end-of-sequence) after each
        prompt: restricted decoding for closed questions picks the argmax. ``prompts`` and ``candidates`` are id
        lists (the candidates ending in eos)."""
        prefix = self.prefix(features)
        device = self.lm.get_input_embeddings().weight.device
        pairs = [(b, c) for b in range(len(prompts)) for c in range(len(candidates))]
        scores = torch.empty(len(prompts) * len(candidates))
        for start in range(0, len(pairs), chunk):
            part = pairs[start:start + chunk]
            ids, mask, labels = (t.to(device) for t in collate([(prompts[b] + candidates[c], len(prompts[b]))
                                                                 for b, c in part], pad_id))
            rows = torch.tensor([b for b, _ in part], device=device)
            embeds, mask, labels = self._inputs(None if prefix is None else prefix[rows], ids, mask, labels)
            logits = self.lm(inputs_embeds=embeds, attention_mask=mask).logits[:, :-1]
            target = labels[:, 1:]
            scored = target != IGNORE  # normalise only the rows that predict a candidate token (vocabularies are big)
            logp = F.log_softmax(logits[scored].float(), dim=-1).gather(-1, target[scored].unsqueeze(-1)).squeeze(-1)
            row = torch.arange(len(part), device=device).unsqueeze(1).expand_as(target)[scored]
            scores[start:start + len(part)] = torch.zeros(len(part), device=device).index_add_(0, row, logp).cpu()
        return scores.view(len(prompts), len(candidates))

    # --- trainable state -----------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Q-Former, queries, projection and LoRA weights (and a tiny LM's token embeddings): everything that trains."""
        return {k: v.detach() for k, v in self.named_parameters() if v.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load exactly the trainable tensors, strictly: a missing, unexpected or wrongly shaped key is an error."""
        params = {k: v for k, v in self.named_parameters() if v.requires_grad}
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        shapes = [k for k in set(params) & set(state) if params[k].shape != state[k].shape]
        if missing or unexpected or shapes:
            parts = [f"{name}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                     for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
                     if keys]
            raise MedvtabError(f"{source}: trainable weights do not fit this model ({'; '.join(parts)})")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(state[k])
