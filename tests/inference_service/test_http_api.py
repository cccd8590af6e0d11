"""The engine's HTTP API against a real process, driven by the clients users have: the official
``lorax-client`` and the ``openai`` package, plus raw HTTP where the shape itself is what is checked."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import httpx
import openai
import pytest
from lorax.errors import GenerationError
from lorax.errors import ValidationError as LoraxValidationError

import lorax
from soppu.store import S3Store
from tests.inference_service.example_user import ExampleUser

MAX_NEW = 8
ROUTES = {"/", "/generate", "/generate_stream", "/v1/completions", "/v1/chat/completions"}
ROUTES |= {"/health", "/tokenize", "/info", "/metrics"}


def _own_fact(user: ExampleUser, base_answers: dict[str, str]) -> tuple[str, str]:
    """A prompt this user's adapter answers differently from the base model, and that answer."""
    for prompt, answer in user.answers.items():
        if answer != base_answers[prompt]:
            return prompt, answer
    raise AssertionError(f"{user.user_id} agrees with the base model everywhere")


def _local(user: ExampleUser) -> dict[str, str]:
    return {"adapter_id": str(user.adapter_dir), "adapter_source": "local"}


def test_lorax_client_generate_base_and_adapter(
    engine_url: str, example_users: list[ExampleUser], base_answers: dict[str, str]
) -> None:
    client = lorax.Client(engine_url)
    prompt, answer = _own_fact(example_users[0], base_answers)

    base = client.generate(prompt, max_new_tokens=MAX_NEW)
    assert base_answers[prompt] in base.generated_text
    assert base.details is not None and base.details.finish_reason in ("length", "eos_token")

    tuned = client.generate(prompt, max_new_tokens=MAX_NEW, **_local(example_users[0]))
    assert answer in tuned.generated_text
    details = tuned.details
    assert details is not None and details.generated_tokens == len(details.tokens) <= MAX_NEW
    assert "".join(t.text for t in details.tokens).startswith(tuned.generated_text.strip()[:3])


def test_lorax_client_generate_stream_with_adapter(
    engine_url: str, example_users: list[ExampleUser], base_answers: dict[str, str]
) -> None:
    prompt, answer = _own_fact(example_users[1], base_answers)
    events = list(lorax.Client(engine_url).generate_stream(prompt, max_new_tokens=MAX_NEW, **_local(example_users[1])))
    assert events and all(e.generated_text is None for e in events[:-1])
    last = events[-1]
    assert last.generated_text is not None and answer in last.generated_text
    assert last.details is not None and last.details.generated_tokens == len(events)
    assert "".join(e.token.text for e in events).startswith(last.generated_text)


def test_generate_with_details_headers_and_full_text(engine_url: str, example_users: list[ExampleUser]) -> None:
    prompt = next(iter(example_users[0].answers))
    parameters = {
        **_local(example_users[0]),
        "max_new_tokens": 4,
        "details": True,
        "decoder_input_details": True,
        "return_full_text": True,
    }
    r = httpx.post(f"{engine_url}/generate", json={"inputs": prompt, "parameters": parameters}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["generated_text"].startswith(prompt)
    details = body["details"]
    assert details["generated_tokens"] == len(details["tokens"]) == 4
    assert len(details["prefill"]) == details["prompt_tokens"]
    assert r.headers["x-prompt-tokens"] == str(details["prompt_tokens"])
    assert r.headers["x-generated-tokens"] == "4"
    assert r.headers["x-total-tokens"] == str(details["prompt_tokens"] + 4)
    assert (r.headers["x-adapter-id"], r.headers["x-adapter-source"]) == (str(example_users[0].adapter_dir), "local")


def test_s3_adapter_is_the_default_source(
    engine_url: str, s3_store: S3Store, example_users: list[ExampleUser], base_answers: dict[str, str]
) -> None:
    user = example_users[2]
    prefix = f"users/{user.user_id}/v00000001"
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        s3_store.put(f"{prefix}/{name}", Path(user.adapter_dir / name))
    prompt, answer = _own_fact(user, base_answers)
    parameters = {"adapter_id": f"s3://{s3_store.bucket}/{prefix}", "max_new_tokens": MAX_NEW}
    r = httpx.post(f"{engine_url}/generate", json={"inputs": prompt, "parameters": parameters}, timeout=60)
    assert r.status_code == 200, r.text
    assert answer in r.json()["generated_text"]
    assert r.headers["x-adapter-source"] == "s3"


def test_openai_completions_with_adapter(
    engine_url: str, example_users: list[ExampleUser], base_answers: dict[str, str]
) -> None:
    client = openai.OpenAI(base_url=f"{engine_url}/v1", api_key="unused")
    user = example_users[3]
    prompt, answer = _own_fact(user, base_answers)

    done = client.completions.create(model=str(user.adapter_dir), prompt=prompt, max_tokens=MAX_NEW)
    assert answer in done.choices[0].text
    assert done.choices[0].finish_reason in ("length", "stop")
    assert done.usage is not None and 0 < done.usage.completion_tokens <= MAX_NEW

    chunks = list(
        client.completions.create(model=str(user.adapter_dir), prompt=prompt, max_tokens=MAX_NEW, stream=True)
    )
    assert answer in "".join(c.choices[0].text for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_openai_chat_completions(engine_url: str) -> None:
    client = openai.OpenAI(base_url=f"{engine_url}/v1", api_key="unused")
    messages = [{"role": "user", "content": "My pet is a"}]

    done = client.chat.completions.create(model="default", messages=messages, max_tokens=4, temperature=0)
    assert done.object == "chat.completion"
    assert done.choices[0].message.role == "assistant" and done.choices[0].message.content
    assert done.usage is not None and done.usage.completion_tokens <= 4

    chunks = list(client.chat.completions.create(model="default", messages=messages, max_tokens=4, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert "".join(c.choices[0].delta.content or "" for c in chunks)


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"top_k": 0}, "top_k"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 100_000}, "max_new_tokens"),
        ({"do_sample": True, "temperature": 0}, "temperature"),
        ({"best_of": 2, "do_sample": True}, "best_of"),
        ({"watermark": True}, "watermark"),
        ({"adapter_id": "some/adapter", "adapter_source": "hub"}, "Hub"),
        ({"seed": 2**64}, "seed"),  # was a 500 carrying torch's exception text
        ({"temperature": 1000.0}, "temperature"),
        ({"repetition_penalty": 1e-300}, "repetition_penalty"),
    ],
)
def test_bad_parameters_answer_422_in_lorax_shape(engine_url: str, parameters: dict[str, object], named: str) -> None:
    r = httpx.post(f"{engine_url}/generate", json={"inputs": "My pet is a", "parameters": parameters}, timeout=60)
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "validation" and named in r.json()["error"]


def test_a_tiny_temperature_is_sampled_at_the_floor_as_lorax_accepts_it(engine_url: str) -> None:
    # LoRAX takes any temperature above 0; logits / 1e-300 would overflow (once a batch-wide 424), so it is
    # sampled at 0.01 (soppu.sampling.sampling_temperature).
    parameters = {"do_sample": True, "temperature": 1e-300, "seed": 3, "max_new_tokens": 3}
    r = httpx.post(f"{engine_url}/generate", json={"inputs": "My pet is a", "parameters": parameters}, timeout=60)
    assert r.status_code == 200, r.text
    floor = {**parameters, "temperature": 0.01}
    same = httpx.post(f"{engine_url}/generate", json={"inputs": "My pet is a", "parameters": floor}, timeout=60)
    assert r.json()["generated_text"] == same.json()["generated_text"]


def test_an_oversize_prompt_is_refused_before_tokenizing(engine_url: str) -> None:
    # 70,000 characters: over the default max_input_chars (65,536), so never tokenized.
    r = httpx.post(f"{engine_url}/generate", json={"inputs": "My pet is a " * 6000}, timeout=60)
    assert r.status_code == 422 and r.json()["error_type"] == "validation"
    assert "max_input_chars" in r.json()["error"]
    r = httpx.post(f"{engine_url}/tokenize", json={"inputs": "x" * 70_000}, timeout=60)
    assert r.status_code == 422 and "max_input_chars" in r.json()["error"]


def test_request_errors_reach_every_client_with_their_status(engine_url: str, examples_dir: Path) -> None:
    missing = str(examples_dir / "adapters" / "no-such-adapter")  # under the engine's local root
    with pytest.raises(LoraxValidationError):
        lorax.Client(engine_url).generate("My pet is a", max_new_tokens=MAX_NEW, top_k=-1)
    with pytest.raises(GenerationError):
        lorax.Client(engine_url).generate("My pet is a", adapter_id=missing, adapter_source="local")
    # a stream that cannot start answers with the status, not with a 200 stream
    r = httpx.post(
        f"{engine_url}/generate_stream",
        json={"inputs": "My pet is a", "parameters": {"adapter_id": missing, "adapter_source": "local"}},
        timeout=60,
    )
    assert r.status_code == 424 and r.json()["error_type"] == "generation"
    client = openai.OpenAI(base_url=f"{engine_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as raised:
        client.completions.create(model=missing, prompt="My pet is a", max_tokens=MAX_NEW)
    assert raised.value.status_code == 424
    r = httpx.post(f"{engine_url}/generate", json={"parameters": {}}, timeout=60)
    assert r.status_code == 422 and r.json() == {"error": "inputs: Field required", "error_type": "validation"}


def test_tokenize_and_info(engine_url: str) -> None:
    text = "My pet is a"
    tokens = httpx.post(f"{engine_url}/tokenize", json={"inputs": text}, timeout=60).json()
    assert [t["text"] for t in tokens] == [text[t["start"] : t["stop"]] for t in tokens]
    assert "".join(t["text"] for t in tokens) == text
    info = httpx.get(f"{engine_url}/info", timeout=60).json()
    assert info["model_id"] == "base" and info["model_device_type"] == "cpu"
    assert info["max_input_length"] < info["max_total_tokens"]
    assert set(info["adapter_sources"]) == {"s3", "local"}


def test_health_metrics_and_openapi(engine_url: str) -> None:
    health = httpx.get(f"{engine_url}/health", timeout=60)
    assert health.status_code == 200 and health.content == b""
    httpx.post(f"{engine_url}/generate", json={"inputs": "My pet is a", "parameters": {"max_new_tokens": 2}})
    httpx.post(f"{engine_url}/generate", json={"inputs": "My pet is a", "parameters": {"top_k": 0, "best_of": 3}})
    metrics = httpx.get(f"{engine_url}/metrics", timeout=60).text
    for name in (
        "lorax_request_count_total",
        "lorax_request_success_total",
        "lorax_request_duration_bucket",
        "lorax_request_generated_tokens_bucket",
        "lorax_request_input_length_bucket",
        "lorax_queue_length",
        "lorax_batch_current_size",
        "soppu_adapter_cache_entries",
        "soppu_adapter_cache_bytes",
    ):
        assert f"\n{name}" in metrics, name
    assert 'lorax_request_failure_total{err="validation"}' in metrics
    paths = httpx.get(f"{engine_url}/openapi.json", timeout=60).json()["paths"]
    assert set(paths) == ROUTES


def _refusal(engine_url: str, adapter_id: str, source: str) -> tuple[int, str, str]:
    parameters = {"adapter_id": adapter_id, "adapter_source": source, "max_new_tokens": 1}
    r = httpx.post(f"{engine_url}/generate", json={"inputs": "My pet is a", "parameters": parameters}, timeout=60)
    body = r.json()
    return r.status_code, body["error_type"], body["error"].replace(repr(adapter_id), "<id>")


def test_local_paths_and_buckets_the_engine_does_not_serve_are_refused_alike(
    engine_url: str, examples_dir: Path, tmp_path: Path, example_users: list[ExampleUser], moto_server: str
) -> None:
    # The session's engine serves local adapters from examples_dir only, and the buckets test-* and gw-*.
    outside = tmp_path / "adapter"
    outside.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (outside / name).write_bytes((example_users[0].adapter_dir / name).read_bytes())
    climbing = f"{examples_dir}/{os.path.relpath(outside, examples_dir)}"  # .. out of the root, to a real adapter
    local = {_refusal(engine_url, path, "local") for path in (str(outside), str(tmp_path / "missing"), climbing)}
    assert len(local) == 1, local  # the same answer whether the path exists or not
    status, error_type, message = local.pop()
    assert (status, error_type) == (403, "adapter_refused") and str(tmp_path) not in message

    other = S3Store(f"other-{uuid.uuid4().hex[:12]}", endpoint_url=moto_server, access_key="testing",
                    secret_key="testing", region="us-east-1")  # fmt: skip
    other.ensure_bucket()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        other.put(f"users/u/v00000001/{name}", example_users[0].adapter_dir / name)
    ids = (f"s3://{other.bucket}/users/u/v00000001", "s3://no-such-bucket/users/u/v00000001")
    s3 = {_refusal(engine_url, adapter_id, "s3") for adapter_id in ids}
    assert len(s3) == 1 and s3.pop()[:2] == (403, "adapter_refused"), s3


def test_a_body_over_the_cap_is_refused_before_it_is_read(engine_url: str) -> None:
    # Found in review: the body guard had no cap, so a huge body was read and parsed whole before any check.
    body = b'{"inputs": "' + b"x" * (5 << 20) + b'"}'
    r = httpx.post(engine_url + "/generate", content=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error_type"] == "too_large"
