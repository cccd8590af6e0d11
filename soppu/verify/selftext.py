"""The gate's behaviour check: does a candidate adapter (a compressed form, as plain LoRA) act like the original
on text the original writes itself, and give the same greedy answers to the uploader's own probes?

Generic probes with a few greedy tokens proved a poor judge (they passed users who then answered wrongly and
failed users who answered perfectly). Two measures replace them:

- **Self-written text** (:func:`self_text_behaviour`): the original samples continuations after some prompts
  (:func:`soppu.compression.distill.teacher_text`, with a seed of its own so the text is held out from any core
  fit), and the candidate is teacher-forced along them. Reported: the mean and worst next-token KL over the
  scored positions, ``kl_lost`` (the mean KL over the base model's own: the share of the adapter's effect the
  candidate loses, 0 for a perfect copy and about 1 for no adapter at all; unlike raw KL it does not depend on
  how sharp the model's distributions are), and greedy agreement (positions where both argmaxes agree).
- **Probe answers** (:func:`probe_answers`): the first sentence of the greedy reply to each probe (at most
  ``max_new_tokens`` tokens); the gate requires it identical, character for character.

Prompts are raw text for a completion model and a user turn in the tokenizer's chat template for a chat model
(:func:`encode_prompts`). Pure torch over a passed-in model; no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from soppu.adapter.apply import apply_adapter
from soppu.adapter.model import LoraAdapter
from soppu.compression.distill import DistillSettings, Teacher, position_kl, teacher_text
from soppu.generation import generate_ids, left_padded

__all__ = [
    "SelfTextBehaviour",
    "base_kl",
    "encode_prompts",
    "first_sentence",
    "own_text",
    "probe_answers",
    "self_text_behaviour",
]

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


@dataclass(frozen=True)
class SelfTextBehaviour:
    kl_mean: float  # nats per scored position
    kl_max: float
    kl_lost: float  # kl_mean / the base model's: the share of the adapter's effect the candidate loses
    agreement: float  # share of scored positions where the candidate's argmax is the original's
    positions: int


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt: a user turn of the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        turns = [[{"role": "user", "content": p}] for p in prompts]
        texts = [str(tokenizer.apply_chat_template(t, tokenize=False, add_generation_prompt=True)) for t in turns]
    else:
        texts = list(prompts)
    return [list(tokenizer(t)["input_ids"]) for t in texts]


def _kl_scored(teacher: Teacher, logits: torch.Tensor) -> torch.Tensor:
    return position_kl(teacher.log_probs, logits).clamp_min(0.0)[teacher.scored]


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


@torch.no_grad()
def base_kl(model: nn.Module, teacher: Teacher) -> float:
    """Mean KL from the original to the base model alone along the teacher text: how far the adapter moves the
    model there. The yardstick of ``kl_lost`` (floored, so an adapter that changes nothing divides safely)."""
    return max(float(_kl_scored(teacher, model(input_ids=teacher.ids).logits).mean()), 1e-6)


@torch.no_grad()
def self_text_behaviour(model: nn.Module, candidate: LoraAdapter, teacher: Teacher, base: float) -> SelfTextBehaviour:
    """The candidate teacher-forced along the original's text (``teacher``), compared position by position;
    ``base`` is :func:`base_kl` of the same teacher."""
    with apply_adapter(model, candidate):
        logits = model(input_ids=teacher.ids).logits
    kl = _kl_scored(teacher, logits)
    agree = (teacher.log_probs.argmax(-1) == logits.argmax(-1))[teacher.scored]
    kl_mean = float(kl.mean())
    return SelfTextBehaviour(kl_mean, float(kl.max()), kl_mean / base, float(agree.float().mean()), int(kl.numel()))


def own_text(
    model: nn.Module, tokenizer: Any, original: LoraAdapter, prompts: Sequence[list[int]], settings: DistillSettings
) -> Teacher:
    """:func:`~soppu.compression.distill.teacher_text` with the tokenizer's end and padding tokens: the text a
    fit learns from, or (with a seed of its own) the text the gate judges on."""
    eos = tokenizer.eos_token_id
    return teacher_text(model, original, prompts, settings, eos_token_id=eos, pad_token_id=_pad_id(tokenizer))


def first_sentence(text: str) -> str:
    """The reply up to and including its first sentence end (or line end), stripped: the answer a probe asks
    for. A completion model runs on after it ("teal. My city is ..."); what follows is not the answer."""
    match = _SENTENCE_END.search(text)
    return (text[: match.end()] if match else text).strip()


@torch.no_grad()
def probe_answers(
    model: nn.Module, tokenizer: Any, adapter: LoraAdapter, prompts: Sequence[list[int]], max_new_tokens: int
) -> list[str]:
    """The first sentence of the greedy reply to every prompt (:func:`first_sentence`), in one left-padded batch."""
    pad = _pad_id(tokenizer)
    ids, mask = left_padded(prompts, pad, next(model.parameters()).device)
    width = ids.shape[1]
    with apply_adapter(model, adapter):
        out = generate_ids(
            model,
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
    return [first_sentence(tokenizer.decode(row, skip_special_tokens=True)) for row in out[:, width:]]
