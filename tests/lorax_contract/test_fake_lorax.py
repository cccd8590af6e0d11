"""Contract tests of the fake LoRAX itself: each checks one behaviour of LoRAX 0.12.1, cited from its source (tag
``v0.12.1``, paths relative to its tree), against the fake running as a real process (``conftest.py``), driven by
the real ``lorax-client`` and ``openai`` packages where a client is what is checked and by raw HTTP where the
bytes are. Adapters come from the session's moto S3 server; "our engine" is the session's inference_service
process (tests/conftest.py), the reference for what an adapter should compute."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from lorax.errors import GenerationError, OverloadedError
from lorax.errors import ValidationError as LoraxValidationError

import lorax
from soppu.store import S3Store
from tests.lorax_contract.fake_lorax_calls import (
    MAX_NEW,
    TIMEOUT,
    data_lines,
    example_manifest,
    fresh_key,
    generate,
    post_stream,
    token_logprobs,
)

# --- request schema and refusals --------------------------------------------------------------------------------


def test_lorax_client_generate_and_stream_on_the_base_model(fake_lorax_url: str, examples_dir: Path) -> None:
    """POST / (server.rs:79-119) answers a one-element list, which lorax-client reads; GenerateResponse and Details
    as lib.rs:459-483 (token ``skipped``, ``skipped_tokens``); StreamResponse events, the last with the text
    (server.rs:1008-1100)."""
    prompt = next(iter(example_manifest(examples_dir)["base_answers"]))
    client = lorax.Client(fake_lorax_url, timeout=int(TIMEOUT))
    response = client.generate(prompt, max_new_tokens=MAX_NEW, details=True)
    assert response.details is not None and response.details.generated_tokens == len(response.details.tokens)
    assert example_manifest(examples_dir)["base_answers"][prompt] in response.generated_text

    events = list(client.generate_stream(prompt, max_new_tokens=MAX_NEW))
    assert [e.generated_text is None for e in events] == [True] * (len(events) - 1) + [False]
    assert "".join(e.token.text for e in events) == events[-1].generated_text == response.generated_text

    raw = generate(fake_lorax_url, prompt).json()
    assert set(raw["details"]) == {"finish_reason", "prompt_tokens", "generated_tokens", "skipped_tokens", "seed",
                                   "prefill", "tokens"}  # fmt: skip
    assert set(raw["details"]["tokens"][0]) == {"id", "text", "logprob", "special", "skipped"}
    assert "details" not in generate(fake_lorax_url, prompt, details=False).json()  # lib.rs:481 skip if None


@pytest.mark.parametrize(
    ("path", "body", "status", "text"),
    [
        # GenerateParameters.max_new_tokens is Option<u32> (lib.rs:254-255): serde refuses -1 in axum's Json.
        ("/generate", {"inputs": "x", "parameters": {"max_new_tokens": -1}}, 422,
         "parameters.max_new_tokens: invalid value: integer `-1`, expected u32"),
        ("/generate", {"parameters": {}}, 422, "missing field `inputs`"),
        ("/generate", {"inputs": 5}, 422, "inputs: invalid type: integer `5`, expected a string"),
        # CompletionRequest.prompt is a String, stop a Vec<String> (lib.rs:971-1003).
        ("/v1/completions", {"model": "m", "prompt": ["a", "b"]}, 422,
         "prompt: invalid type: sequence, expected a string"),
        ("/v1/completions", {"model": "m", "prompt": "a", "stop": "x"}, 422,
         'stop: invalid type: string "x", expected a sequence'),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": [1]}, 422,
         "stop[0]: invalid type: integer `1`, expected a string"),
    ],
)  # fmt: skip
def test_body_that_does_not_deserialize_is_a_plain_text_422(
    fake_lorax_url: str, path: str, body: dict[str, Any], status: int, text: str
) -> None:
    """axum 0.7's Json rejection (router/Cargo.toml:19): a plain-text body, not LoRAX's error JSON."""
    r = httpx.post(f"{fake_lorax_url}{path}", json=body, timeout=TIMEOUT)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text == f"Failed to deserialize the JSON body into the target type: {text}"


def test_syntax_error_and_missing_content_type(fake_lorax_url: str) -> None:
    """axum's Json extractor: 400 on bad JSON, 415 without application/json."""
    bad = httpx.post(f"{fake_lorax_url}/generate", content=b"{", headers={"content-type": "application/json"})
    assert bad.status_code == 400
    plain = httpx.post(f"{fake_lorax_url}/generate", content=b'{"inputs": "x"}', headers={"content-type": "text/plain"})
    assert plain.status_code == 415 and plain.text == "Expected request with `Content-Type: application/json`"


@pytest.mark.parametrize(
    ("parameters", "error"),
    [
        ({"top_k": 0}, "`top_k` must be strictly positive"),  # validation.rs:296-303
        ({"temperature": -0.5}, "`temperature` must be non-negative"),  # validation.rs:256-259
        ({"top_p": 1.5}, "`top_p` must be > 0.0 and < 1.0"),  # validation.rs:278-285
        ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),  # validation.rs:314-316
        ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),  # :318-323
        ({"repetition_penalty": 0}, "`repetition_penalty` must be strictly positive"),  # validation.rs:261-264
        ({"best_of": 2}, "you must use sampling when `best_of` is > 1"),  # validation.rs:244-254
        ({"max_new_tokens": 500}, "`inputs` tokens + `max_new_tokens` must be <= 128. Given: "),  # :128-142
    ],
)
def test_validation_refusals_are_json_422(fake_lorax_url: str, parameters: dict[str, Any], error: str) -> None:
    """InferError::ValidationError: 422, ``Input validation error: ...``, error_type validation (infer.rs:1570,
    1591; server.rs:1586-1607); lorax-client raises its ValidationError on it."""
    r = httpx.post(f"{fake_lorax_url}/generate", json={"inputs": "My pet is a", "parameters": parameters})
    assert r.status_code == 422
    body = r.json()
    assert body["error_type"] == "validation" and body["error"].startswith(f"Input validation error: {error}")
    with pytest.raises(LoraxValidationError):
        named = {("stop_sequences" if k == "stop" else k): v for k, v in parameters.items()}  # the client's name
        lorax.Client(fake_lorax_url).generate("My pet is a", **named)


def test_top_p_of_one_and_temperature_zero_pass(fake_lorax_url: str) -> None:
    """top_p = 1.0 passes despite the message (validation.rs:280); temperature 0 is greedy (tokens.py:88-94)."""
    greedy = token_logprobs(generate(fake_lorax_url, "My pet is a"))
    assert token_logprobs(generate(fake_lorax_url, "My pet is a", top_p=1.0, temperature=0.0)) == greedy


# --- streams ---------------------------------------------------------------------------------------------------


def test_stream_events_have_no_space_and_errors_come_after_200(fake_lorax_url: str) -> None:
    """Events are axum's ``data:{...}`` (server.rs:891, 1018); a validation error is an event after HTTP 200
    (server.rs:1131-1135), as are best_of and decoder_input_details on a stream (server.rs:980-990)."""
    body = {"inputs": "My pet is a", "parameters": {"max_new_tokens": 3}}
    status, raw = post_stream(fake_lorax_url, "/generate_stream", body)
    assert status == 200 and raw.startswith(b'data:{"token":{') and b"data: " not in raw
    assert raw.endswith(b"\n\n") and len(data_lines(raw)) == 3

    for parameters, error in [
        ({"top_k": 0}, "Input validation error: `top_k` must be strictly positive"),
        ({"decoder_input_details": True}, "Input validation error: `decoder_input_details` == true is not supported "
         "when streaming tokens"),
        ({"best_of": 2, "do_sample": True}, "Input validation error: `best_of` != 1 is not supported when streaming "
         "tokens"),
    ]:  # fmt: skip
        status, raw = post_stream(fake_lorax_url, "/generate_stream", {"inputs": "x", "parameters": parameters})
        assert status == 200
        assert [json.loads(e) for e in data_lines(raw)] == [{"error": error, "error_type": "validation"}]


def test_adapter_download_failure_is_424_or_an_in_stream_event(fake_lorax_url: str, s3_store: S3Store) -> None:
    """A failed download reaches the request as InferError::GenerationError of the server's message
    (loader.rs:161-172, 287-294; client/src/lib.rs:36-42): 424 on /generate, an event after 200 on a stream."""
    missing = f"s3://{s3_store.bucket}/{fresh_key()}"
    r = generate(fake_lorax_url, "My pet is a", missing)
    assert r.status_code == 424
    assert r.json()["error_type"] == "generation"
    assert r.json()["error"].startswith("Request failed during generation: Server error: No valid adapter config")
    with pytest.raises(GenerationError):
        lorax.Client(fake_lorax_url).generate("x", adapter_id=missing, adapter_source="s3")

    body = {"inputs": "x", "parameters": {"adapter_id": missing, "adapter_source": "s3"}}
    status, raw = post_stream(fake_lorax_url, "/generate_stream", body)
    assert status == 200 and json.loads(data_lines(raw)[0])["error_type"] == "generation"


def test_openai_streams_say_model_null_and_end_with_done(fake_lorax_url: str, lorax_model_dir: Path) -> None:
    """OpenAI chunks carry id and model "null" (lib.rs:1268-1308, 1383-1428) and the stream ends with
    ``data:[DONE]`` (server.rs:121, 190, 1097-1099); the chat response names the served model (server.rs:242)."""
    client = openai.OpenAI(base_url=f"{fake_lorax_url}/v1", api_key="unused", timeout=TIMEOUT)
    model = str(lorax_model_dir)  # the served model id: the base model, no adapter (server.rs:157-161)
    chunks = list(client.completions.create(model=model, prompt="My pet is a", max_tokens=4, stream=True))
    assert chunks and {c.model for c in chunks} == {"null"} and chunks[-1].choices[0].finish_reason == "length"
    chat = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "My pet is a"}], max_tokens=4, temperature=0, stream=True
    ))  # fmt: skip
    assert chat and {c.model for c in chat} == {"null"} and chat[0].choices[0].delta.role == "assistant"

    body = {"model": model, "prompt": "My pet is a", "max_tokens": 3, "stream": True}
    status, raw = post_stream(fake_lorax_url, "/v1/completions", body)
    assert status == 200 and raw.endswith(b"data:[DONE]\n\n") and raw.count(b"data:") == 4
    whole = client.completions.create(model=model, prompt="My pet is a", max_tokens=4)
    assert whole.model == "null" and whole.id == "null"  # lib.rs:1236-1266
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "My pet is a"}], max_tokens=4, temperature=0
    )
    assert answer.model == model and answer.system_fingerprint == "0.12.1-native"


def test_chat_refusals_come_before_the_stream(fake_lorax_url: str) -> None:
    """try_into_generate's errors are returned before any stream starts (server.rs:250-251): response_format with
    tools is a 422 tool_error (server.rs:406-410), even with ``stream: true``."""
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [], "response_format": {},
            "stream": True}  # fmt: skip
    r = httpx.post(f"{fake_lorax_url}/v1/chat/completions", json=body, timeout=TIMEOUT)
    assert r.status_code == 422 and r.json()["error_type"] == "tool_error"


# --- /health, /info and overload -----------------------------------------------------------------------------------


def test_health_generates_and_fails_under_overload_while_info_answers(fake_lorax_url: str) -> None:
    """/health runs a one-token generation through the permit (server.rs:508-562, infer.rs:286-295): 200 with an
    empty body, but 500 with the overload error when no permit is free; /info answers regardless
    (server.rs:449-451). Without a permit /generate is 429 ``Model is overloaded`` (infer.rs:1568, server.rs:1590),
    and a stream is a 200 carrying that error as its event."""
    ok = httpx.get(f"{fake_lorax_url}/health", timeout=TIMEOUT)
    assert ok.status_code == 200 and ok.content == b""
    held = 0
    try:
        while httpx.post(f"{fake_lorax_url}/fake/hold").status_code == 200:
            held += 1
        assert held == 4  # --max-concurrent-requests 4 (conftest)
        overloaded = {"error": "Model is overloaded", "error_type": "overloaded"}
        health = httpx.get(f"{fake_lorax_url}/health", timeout=TIMEOUT)
        assert health.status_code == 500 and health.json() == overloaded
        r = generate(fake_lorax_url, "My pet is a")
        assert r.status_code == 429 and r.json() == overloaded
        with pytest.raises(OverloadedError):
            lorax.Client(fake_lorax_url).generate("My pet is a", max_new_tokens=2)
        status, raw = post_stream(fake_lorax_url, "/generate_stream", {"inputs": "x"})
        assert status == 200 and [json.loads(e) for e in data_lines(raw)] == [overloaded]
        info = httpx.get(f"{fake_lorax_url}/info", timeout=TIMEOUT)
        assert info.status_code == 200 and info.json()["max_concurrent_requests"] == 4
    finally:
        for _ in range(held):
            httpx.post(f"{fake_lorax_url}/fake/release")
    assert httpx.get(f"{fake_lorax_url}/health", timeout=TIMEOUT).status_code == 200
