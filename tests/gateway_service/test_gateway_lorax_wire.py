"""The gateway in front of a backend that speaks as LoRAX 0.12.1 does (``lorax_stub.py``: ``data:{`` with no
space, every stream error as an event after the 200, ``"model":"null"`` in OpenAI chunks, string-only prompts and
list-only stops, a ``/health`` that generates), driven by ``lorax-client``, ``openai`` and raw HTTP; and the exact
token charge of streams from both backend kinds (the real engine for ``engine``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import openai
import pytest
from lorax.errors import GenerationError, OverloadedError

import lorax
from tests.gateway_service.gateway_support import Deployment, ExampleUser, publish

GENERATED = "soppu_gateway_generated_tokens_total"
Users = tuple[list[ExampleUser], dict[str, str]]


def _metric(gw: Deployment, series: str) -> float:
    """One series of the gateway's /metrics (0 when absent), e.g. ``name_total{label="x"}``."""
    for line in httpx.get(f"{gw.url}/metrics").text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return 0.0


def _settled(gw: Deployment, series: str, before: float) -> float:
    """The series once it moved from ``before``: a stream is charged when it closes, just after its last byte."""
    deadline = time.monotonic() + 10
    while (value := _metric(gw, series)) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _post(gw: Deployment, user: str, path: str, **body: object) -> httpx.Response:
    return httpx.post(f"{gw.url}{path}", json={"inputs": "hello", **body}, headers=gw.headers(user), timeout=30)


def _data(response: httpx.Response) -> list[object]:
    """The events' data as the SSE standard reads it (``data:`` with or without its space); [DONE] as a string."""
    payloads = [line[5:].removeprefix(" ") for line in response.text.splitlines() if line.startswith("data:")]
    return [p if p == "[DONE]" else json.loads(p) for p in payloads]


def _received(gw: Deployment, prompt: str) -> list[dict[str, object]]:
    """The stub's requests whose prompt (inputs, prompt or last message) was ``prompt``."""
    requests = httpx.get(f"{gw.backends[0].url}/stub/requests").json()

    def prompt_of(body: dict[str, object]) -> object:
        messages = body.get("messages")
        return messages[-1]["content"] if isinstance(messages, list) else body.get("inputs", body.get("prompt"))

    return [r for r in requests if prompt_of(r["body"]) == prompt]


def _openai(gw: Deployment, user: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.keys[user], max_retries=0)


def test_a_lorax_stream_passes_through_and_its_error_events_are_counted(lorax_gateway: Deployment) -> None:
    gw = lorax_gateway
    r = _post(gw, "u00", "/generate_stream", parameters={"max_new_tokens": 3})
    assert r.status_code == 200 and r.text.startswith(":\n\ndata:{")  # the keep-alive first, events as LoRAX wrote
    events = _data(r)
    assert len(events) == 3 and events[-1]["generated_text"].startswith("local|")  # type: ignore[index]
    series = 'soppu_gateway_stream_errors_total{error_type="generation"}'
    before = _metric(gw, series)
    r = _post(gw, "u00", "/generate_stream", inputs="lorax:error-after")
    assert r.status_code == 200  # a token went first: the error is passed on in the stream
    events = _data(r)
    assert "token" in events[0] and events[-1]["error_type"] == "generation"  # type: ignore[index,operator]
    assert _metric(gw, series) == before + 1
    client = lorax.Client(gw.url, headers=gw.headers("u00"))
    with pytest.raises(GenerationError, match="CUDA error"):
        list(client.generate_stream("lorax:error-after"))


def test_an_overload_opening_a_stream_is_retried_then_answered_429(lorax_gateway: Deployment) -> None:
    gw = lorax_gateway
    retries = 'soppu_gateway_upstream_retries_total{reason="overloaded"}'
    overloads = 'soppu_gateway_stream_errors_total{error_type="overloaded"}'
    before = (len(_received(gw, "lorax:busy")), _metric(gw, retries), _metric(gw, overloads))
    r = _post(gw, "u01", "/generate_stream", inputs="lorax:busy")
    assert (r.status_code, r.json()["error_type"]) == (429, "overloaded"), r.text
    after = (len(_received(gw, "lorax:busy")), _metric(gw, retries), _metric(gw, overloads))
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 2, 3]  # the first try and two retries
    client = lorax.Client(gw.url, headers=gw.headers("u01"))
    with pytest.raises(OverloadedError):
        list(client.generate_stream("lorax:busy"))
    with pytest.raises(openai.RateLimitError):
        _openai(gw, "u01").completions.create(model="default", prompt="lorax:busy", stream=True)


def test_a_retired_version_opening_a_stream_is_re_resolved(lorax_gateway: Deployment) -> None:
    gw = lorax_gateway
    assert _post(gw, "u02", "/generate").headers["x-adapter-version"] == "1"  # cached now, for the resolution TTL
    publish(gw.store, "u02", None, 2)  # a refit publishes v2 and deletes v1's files at once
    r = _post(gw, "u02", "/generate_stream", inputs="lorax:424-v1")
    assert r.status_code == 200 and r.headers["x-adapter-version"] == "2", r.text
    assert _data(r)[-1]["generated_text"].endswith("/v00000002")  # type: ignore[index]
    assert [str(q["body"]["parameters"]["adapter_id"])[-9:] for q in _received(gw, "lorax:424-v1")] == [
        "v00000001",
        "v00000002",
    ]


def test_a_validation_error_opening_a_stream_is_answered_422_once(lorax_gateway: Deployment) -> None:
    gw = lorax_gateway
    r = _post(gw, "u03", "/generate_stream", inputs="lorax:invalid")
    assert (r.status_code, r.json()["error_type"]) == (422, "validation"), r.text
    assert "strictly positive" in r.json()["error"]
    assert len(_received(gw, "lorax:invalid")) == 1  # not retried


def test_a_stream_lost_before_its_first_event_is_not_answered_200(lorax_gateway: Deployment) -> None:
    """LoRAX sends a stream's headers at once: a backend that dies before the first event has sent the client
    nothing yet, so the request moves on like one whose connection failed (here no backend is left: 503)."""
    gw = lorax_gateway
    r = _post(gw, "u03", "/generate_stream", inputs="lorax:dies")
    assert (r.status_code, r.json()["error_type"]) == (503, "no_backend"), r.text
    assert r.headers["retry-after"] == "1"
    assert _post(gw, "u03", "/generate_stream").status_code == 200  # one broken stream does not mark it down


def test_openai_requests_reach_lorax_in_the_forms_it_takes(lorax_gateway: Deployment) -> None:
    gw = lorax_gateway
    client = _openai(gw, "u04")
    completion = client.completions.create(model="default", prompt=["a list of one"], stop="x", max_tokens=3)
    assert completion.model == "default" and completion.usage is not None
    assert completion.usage.completion_tokens == 3
    (sent,) = _received(gw, "a list of one")
    assert sent["body"]["prompt"] == "a list of one" and sent["body"]["stop"] == ["x"]  # type: ignore[index]
    chat = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "a chat"}], stop="y", max_tokens=3
    )
    assert chat.model == "default"
    (sent,) = _received(gw, "a chat")
    assert sent["body"]["stop"] == ["y"]  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.completions.create(model="default", prompt=["one", "two"], max_tokens=3)
    body = refused.value.response.json()
    assert body["error_type"] == "validation" and "2 prompts" in body["error"]
    assert _received(gw, "one") == []  # refused before anything was forwarded


def test_openai_stream_chunks_name_the_adapter_the_client_asked_for(lorax_gateway: Deployment) -> None:
    client = _openai(lorax_gateway, "u05")
    chunks = list(client.completions.create(model="default", prompt="hi", max_tokens=3, stream=True))
    chat = list(
        client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
        )
    )
    assert len(chunks) == len(chat) == 3
    assert {c.model for c in chunks} == {c.model for c in chat} == {"default"}  # LoRAX wrote "null"


def test_lorax_streams_are_charged_the_tokens_streamed(lorax_gateway: Deployment) -> None:
    gw = lorax_gateway
    client = _openai(gw, "u06")
    streams: dict[str, Callable[[], int]] = {
        "completions": lambda: sum(
            1 for c in client.completions.create(model="default", prompt="hi", max_tokens=5, stream=True) if c.choices
        ),
        "chat": lambda: sum(
            1
            for c in client.chat.completions.create(
                model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
            )
            if c.choices and c.choices[0].delta.content is not None
        ),
        "generate_stream": lambda: sum(
            1 for _ in lorax.Client(gw.url, headers=gw.headers("u06")).generate_stream("hi", max_new_tokens=5)
        ),
    }
    for name, stream in streams.items():
        before = _metric(gw, GENERATED)
        streamed = stream()
        assert streamed == 5, name
        assert _settled(gw, GENERATED, before) - before == streamed, name


def test_engine_streams_are_charged_the_tokens_streamed(engine_gateway: Deployment, example_set: Users) -> None:
    gw = engine_gateway
    user = example_set[0][0]
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.keys[user.user_id], max_retries=0)
    streams = {
        # The engine opens a chat stream with a chunk naming the role, and an echoed prompt comes as a chunk too:
        # neither is a generated token.
        "chat": lambda: client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "My pet is a"}], max_tokens=6, stream=True
        ),
        "completions, echo": lambda: client.completions.create(
            model="default", prompt="My pet is a", max_tokens=6, echo=True, stream=True
        ),
    }
    for name, stream in streams.items():
        before = _metric(gw, GENERATED)
        chunks = list(stream())  # type: ignore[no-untyped-call]
        opening, tokens, closing = chunks[0], chunks[1:-1], chunks[-1]
        assert opening.choices[0].finish_reason is None and closing.choices[0].finish_reason is not None, name
        assert all(c.choices[0].finish_reason is None for c in tokens), name
        assert closing.usage.completion_tokens == len(tokens) > 0, name
        assert _settled(gw, GENERATED, before) - before == len(tokens), name


def test_a_lorax_whose_health_route_is_busy_stays_up(lorax_gateway: Deployment) -> None:
    """LoRAX 0.12.1's /health generates a token through the queue: under load it is slow, or 500 for an overload,
    while the backend serves. The gateway checks /info instead."""
    gw = lorax_gateway
    stub = gw.backends[0].url
    healthy = f'soppu_gateway_backend_healthy{{backend="{stub}"}}'
    try:
        for mode in ("slow", "overloaded"):
            httpx.post(f"{stub}/stub/mode", json={"health": mode})
            seen = sum(httpx.get(f"{stub}/stub/probes").json().values())
            # Checks run one round at a time: a second probe means the first one's round has finished.
            _wait_for(lambda seen=seen: sum(httpx.get(f"{stub}/stub/probes").json().values()) >= seen + 2)
            assert _metric(gw, healthy) == 1, mode
            assert _post(gw, "u07", "/generate").status_code == 200, mode
    finally:
        httpx.post(f"{stub}/stub/mode", json={"health": "ok"})
