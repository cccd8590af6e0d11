"""Asking the example base model each user's questions, with and without that user's adapter.

The tests use this to prove that each adapter teaches its own user's facts, and the compression bench to see
which answers survive compression. Adapters are read through :func:`soppu.adapter.read_adapter`, so they are
validated exactly as an upload would be. A set's ``prompt_style`` says how it is asked: ``completion`` (the
tiny base continues "My favourite colour is" and the first word is the answer) or ``chat`` (the question is a
user turn in the base's chat template, and the reply must state the expected value).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from soppu.adapter import LoraAdapter, read_adapter
from soppu.adapter.apply import apply_adapter
from soppu.examples.personal import answer_has
from soppu.examples.personal_training import ask
from soppu.generation import greedy_generate
from soppu.models import load_causal_lm

__all__ = ["AnswerCheck", "check_examples", "first_word"]

_MAX_NEW_TOKENS = 3
_WORD = re.compile(r"\s*([A-Za-z]+)")


@dataclass(frozen=True, slots=True)
class AnswerCheck:
    user_id: str
    prompt: str
    expected: str
    base_answer: str
    adapter_answer: str
    held_out: bool = False  # a paraphrase the adapter never trained on

    @property
    def ok(self) -> bool:
        return answer_has(self.adapter_answer, self.expected)


def first_word(text: str) -> str:
    """The answer in a continuation such as `` teal. My`` -> ``teal``."""
    match = _WORD.match(text)
    return match[1] if match else ""


def check_examples(
    directory: Path,
    users: list[str] | None = None,
    device: str = "auto",
    adapters: Mapping[str, LoraAdapter] | None = None,
) -> list[AnswerCheck]:
    """For every (selected) user in ``directory/users.json``, the greedy answer to each prompt from the base
    model alone and with the user's adapter: the one on disk, or ``adapters[user_id]`` when given (e.g. the
    PEFT form of a compressed adapter, to see whether the answers survive compression)."""
    manifest = json.loads((directory / "users.json").read_text())
    model, tokenizer = load_causal_lm(directory / manifest["base_model"], device)
    chat = manifest.get("prompt_style") == "chat"

    def answer(prompt: str) -> str:
        new = greedy_generate(
            model, tokenizer(prompt)["input_ids"], max_new_tokens=_MAX_NEW_TOKENS, eos_token_id=tokenizer.eos_token_id
        )
        return first_word(tokenizer.decode(new, skip_special_tokens=True))

    def answers(prompts: list[str], adapter: LoraAdapter | None) -> list[str]:
        if chat:  # one batch per user: replies are a dozen tokens on a 30-layer model
            return ask(model, tokenizer, prompts, adapter)
        if adapter is None:
            return [answer(p) for p in prompts]
        with apply_adapter(model, adapter):
            return [answer(p) for p in prompts]

    selected = [u for u in manifest["users"] if users is None or u["user_id"] in users]
    if adapters is not None:
        selected = [u for u in selected if u["user_id"] in adapters]
    all_prompts = sorted({p["prompt"] for u in selected for p in u["prompts"]})
    base_answers = dict(zip(all_prompts, answers(all_prompts, None), strict=True))
    results = []
    for user in selected:
        if adapters is not None:
            adapter = adapters[user["user_id"]]
        else:
            adapter = read_adapter(directory / user["adapter"], expected_base_model=manifest["base_model_id"])
        replies = answers([p["prompt"] for p in user["prompts"]], adapter)
        results += [
            AnswerCheck(
                user["user_id"], p["prompt"], p["expected"], base_answers[p["prompt"]], reply, p.get("held_out", False)
            )
            for p, reply in zip(user["prompts"], replies, strict=True)
        ]
    return results
