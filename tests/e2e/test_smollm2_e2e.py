"""The real model end to end: SmolLM2-135M-Instruct users (two recipes: q,v r8 and q,k,v,o r4) upload through the
compressor and ask through the gateway with the official clients, on questions they trained on and on paraphrases
their adapters never saw, each getting their own answers and never the other's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from lorax import Client
from soppu.cli.stack import Stack, free_ports_config
from soppu.cli.stack_client import request, upload_adapter, wait_for_job
from soppu.examples.personal import answer_has
from soppu.examples.personal_training import chat_prompt
from soppu.peft_files import CONFIG_NAME, WEIGHTS_NAME

pytestmark = pytest.mark.slow
USERS = 2
MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def users(smollm2_dir: Path) -> list[dict[str, Any]]:
    return json.loads((smollm2_dir / "users.json").read_text())["users"][:USERS]


@pytest.fixture(scope="module")
def stack(smollm2_dir: Path, users: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = free_ports_config(smollm2_dir / "base", tmp_path_factory.mktemp("stack"), device="cpu")
    with Stack(config) as running:
        admin = config.admin_key
        for user in users:
            uid = user["user_id"]
            key = request("POST", f"{running.compressor}/v1/users/{uid}/keys", key=admin)["key"]
            files = {n: (smollm2_dir / user["adapter"] / n).read_bytes() for n in (CONFIG_NAME, WEIGHTS_NAME)}
            job = upload_adapter(f"{running.compressor}/v1/users/{uid}/adapters", files, key=key)
            assert wait_for_job(running.compressor, job["job_id"], key=admin)["state"] == "done"
            user["key"] = key
        yield running


def _questions(user: dict[str, Any]) -> list[dict[str, Any]]:
    """One trained question and one held-out paraphrase, of two different facts."""
    trained = next(p for p in user["prompts"] if not p["held_out"])
    held_out = next(p for p in user["prompts"] if p["held_out"] and p["attribute"] != trained["attribute"])
    return [trained, held_out]


def test_openai_chat_answers_each_user_with_their_own_facts(stack: Stack, users: list[dict[str, Any]]) -> None:
    for user in users:
        client = OpenAI(base_url=f"{stack.gateway}/v1", api_key=user["key"], max_retries=0)
        for question in _questions(user):
            reply = client.chat.completions.create(
                model="default",
                messages=[{"role": "user", "content": question["prompt"]}],
                max_tokens=MAX_NEW_TOKENS,
                temperature=0,
            )
            text = reply.choices[0].message.content or ""
            assert answer_has(text, question["expected"]), (user["user_id"], question["prompt"], text)


def test_lorax_client_generate_answers_each_user_and_never_another(
    stack: Stack, users: list[dict[str, Any]], smollm2_dir: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir / "base"))
    first, second = users
    for user, other in ((first, second), (second, first)):
        client = Client(stack.gateway, headers={"Authorization": f"Bearer {user['key']}"})
        for question in _questions(user):
            text = client.generate(
                chat_prompt(tokenizer, question["prompt"]), max_new_tokens=MAX_NEW_TOKENS
            ).generated_text
            other_value = next(p["expected"] for p in other["prompts"] if p["attribute"] == question["attribute"])
            assert answer_has(text, question["expected"]) and not answer_has(text, other_value), text
