"""The ``make dev`` topology end to end, as real processes (moto S3, engine, compressor, gateway) started by the
same supervisor ``soppu dev`` and ``soppu demo`` use: users upload, compress, and are served their own answers
through the gateway, with new versions, deletion, the official clients, and a compressor crash mid-job."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from lorax import Client
from soppu.cli.stack import Stack, free_ports_config
from soppu.cli.stack_client import ApiError, request, upload_adapter, wait_for_job
from soppu.peft_files import CONFIG_NAME, WEIGHTS_NAME

USERS = 5


@pytest.fixture(scope="module")
def users(examples_dir: Path) -> list[dict[str, Any]]:
    return json.loads((examples_dir / "users.json").read_text())["users"][:USERS]


@pytest.fixture(scope="module")
def stack(examples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = free_ports_config(examples_dir / "base", tmp_path_factory.mktemp("stack"), device="cpu")
    with Stack(config) as running:
        yield running


@pytest.fixture(scope="module")
def keys(stack: Stack, users: list[dict[str, Any]]) -> dict[str, str]:
    admin = stack.config.admin_key
    return {
        u["user_id"]: request("POST", f"{stack.compressor}/v1/users/{u['user_id']}/keys", key=admin)["key"]
        for u in users
    }


def _files(examples_dir: Path, user: dict[str, Any]) -> dict[str, bytes]:
    return {name: (examples_dir / user["adapter"] / name).read_bytes() for name in (CONFIG_NAME, WEIGHTS_NAME)}


def _generate(stack: Stack, key: str, prompt: str) -> str:
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 4, "stop": ["."]}}
    return str(request("POST", f"{stack.gateway}/generate", key=key, body=body)["generated_text"]).strip()


def _answers(stack: Stack, key: str, user: dict[str, Any]) -> list[str]:
    return [_generate(stack, key, p["prompt"]) for p in user["prompts"]]


def _expected(user: dict[str, Any]) -> list[str]:
    return [p["expected"] for p in user["prompts"]]


@pytest.fixture(scope="module")
def uploaded(stack: Stack, users, keys, examples_dir: Path) -> None:
    jobs = [
        upload_adapter(
            f"{stack.compressor}/v1/users/{u['user_id']}/adapters", _files(examples_dir, u), key=keys[u["user_id"]]
        )
        for u in users
    ]
    for job in jobs:
        assert wait_for_job(stack.compressor, job["job_id"], key=stack.config.admin_key)["state"] == "done"


def test_every_user_gets_their_own_answers(stack: Stack, users, keys, uploaded: None) -> None:
    for user in users:
        assert _answers(stack, keys[user["user_id"]], user) == _expected(user), user["user_id"]


def test_the_official_clients_work_through_the_gateway(stack: Stack, users, keys, uploaded: None) -> None:
    user = users[1]
    key, prompt = keys[user["user_id"]], user["prompts"][0]
    client = Client(stack.gateway, headers={"Authorization": f"Bearer {key}"})
    assert (
        client.generate(prompt["prompt"], max_new_tokens=4, stop_sequences=["."]).generated_text.strip()
        == prompt["expected"]
    )
    streamed = "".join(
        r.token.text for r in client.generate_stream(prompt["prompt"], max_new_tokens=4, stop_sequences=["."])
    )
    assert prompt["expected"] in streamed
    openai = OpenAI(base_url=f"{stack.gateway}/v1", api_key=key)
    completion = openai.completions.create(model="default", prompt=prompt["prompt"], max_tokens=4, stop=["."])
    assert completion.choices[0].text.strip() == prompt["expected"]


def test_a_new_version_is_served(stack: Stack, users, keys, uploaded: None, examples_dir: Path) -> None:
    # The first user uploads the second user's adapter as a new version: they now get the second user's answers.
    first, second = users[0], users[1]
    url = f"{stack.compressor}/v1/users/{first['user_id']}/adapters"
    job = upload_adapter(url, _files(examples_dir, second), key=keys[first["user_id"]])
    assert wait_for_job(stack.compressor, job["job_id"], key=stack.config.admin_key)["state"] == "done"
    deadline = time.monotonic() + 10  # the gateway trusts a resolution for at most its TTL (2 s)
    while _answers(stack, keys[first["user_id"]], first) != _expected(second):
        assert time.monotonic() < deadline, "the new version was not served"
        time.sleep(0.5)


def test_a_deleted_user_is_refused_and_the_others_are_not(stack: Stack, users, keys, uploaded: None) -> None:
    gone = users[-1]
    removed = request("DELETE", f"{stack.compressor}/v1/users/{gone['user_id']}", key=stack.config.admin_key)
    assert removed["removed"]
    with pytest.raises(ApiError) as refused:
        _generate(stack, keys[gone["user_id"]], gone["prompts"][0]["prompt"])
    assert refused.value.status == 401
    for user in users[1:-1]:
        assert _answers(stack, keys[user["user_id"]], user) == _expected(user), user["user_id"]


def test_killing_the_compressor_mid_job_loses_nothing(stack: Stack, users, keys, uploaded: None, examples_dir) -> None:
    user = users[2]
    url = f"{stack.compressor}/v1/users/{user['user_id']}/adapters"
    accepted = [upload_adapter(url, _files(examples_dir, user), key=keys[user["user_id"]]) for _ in range(3)]
    stack.kill("compressor")  # SIGKILL right after the acknowledgements: the jobs are queued or running
    stack.restart("compressor")
    for job in accepted:
        assert wait_for_job(stack.compressor, job["job_id"], key=stack.config.admin_key)["state"] == "done"
    adapter = request("GET", url, key=keys[user["user_id"]])["adapters"][0]
    assert adapter["current_version"] >= max(job["version"] for job in accepted)
    assert _answers(stack, keys[user["user_id"]], user) == _expected(user)
