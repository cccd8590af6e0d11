"""Asking the example base model each user's questions, with and without that user's adapter.

This is what ``make demo`` prints for now, and what the tests use to prove the fixture teaches each adapter
its own user's facts. Adapters are read through :func:`soppu.adapter.read_adapter`, so they are validated
exactly as an upload would be.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from soppu.adapter import LoraAdapter, read_adapter
from soppu.adapter.apply import apply_adapter
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

    @property
    def ok(self) -> bool:
        return self.adapter_answer == self.expected


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

    def answer(prompt: str) -> str:
        new = greedy_generate(
            model, tokenizer(prompt)["input_ids"], max_new_tokens=_MAX_NEW_TOKENS, eos_token_id=tokenizer.eos_token_id
        )
        return first_word(tokenizer.decode(new, skip_special_tokens=True))

    base_answers: dict[str, str] = {}
    results = []
    for user in manifest["users"]:
        if users is not None and user["user_id"] not in users:
            continue
        if adapters is not None:
            if user["user_id"] not in adapters:
                continue
            adapter = adapters[user["user_id"]]
        else:
            adapter = read_adapter(directory / user["adapter"], expected_base_model=manifest["base_model_id"])
        for item in user["prompts"]:
            if item["prompt"] not in base_answers:
                base_answers[item["prompt"]] = answer(item["prompt"])
        with apply_adapter(model, adapter):
            answers = {item["prompt"]: answer(item["prompt"]) for item in user["prompts"]}
        results += [
            AnswerCheck(user["user_id"], p["prompt"], p["expected"], base_answers[p["prompt"]], answers[p["prompt"]])
            for p in user["prompts"]
        ]
    return results
