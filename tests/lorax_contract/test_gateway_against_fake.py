"""The gateway and the exports the pipeline publishes, against the fake LoRAX 0.12.1: every piece a real process
(moto S3, the fake under uvicorn, the gateway with one ``lorax`` backend), users published by the real pipeline
(``gateway_fixtures.py``), requests sent with the real ``lorax-client`` and ``openai`` packages or raw HTTP.

What is checked:

1. Users whose raw uploads LoRAX would mis-serve (rsLoRA, rank 4 with ``lora_alpha != r``, an ``alpha_pattern``)
   answer through the gateway and the fake as our engine answers with the upload itself; the same uploads
   published raw answer differently, so the comparison can fail.
2. Streams from the fake pass through the gateway (``data:{`` as LoRAX writes it), OpenAI chunks name the adapter
   the client asked for where the fake writes ``"null"``, and the tokens charged are the tokens streamed.
3. An overloaded fake (its one permit held) is answered 429 after the gateway's retries, for a JSON and a stream
   request, and the gateway keeps the backend up while the fake's ``/health`` answers 500.
4. A version whose export was deleted from the bucket: 424 when the user has no newer version, the newer version
   when a refit published one, for a JSON and a stream request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from lorax.errors import GenerationError, OverloadedError
from safetensors.torch import load as load_safetensors

import lorax
from soppu.adapter import WEIGHTS_NAME, read_adapter
from tests.lorax_contract.gateway_fixtures import VARIANTS, FakeDeployment, publish_upload
from tests.support.processes import ServiceProcess

MAX_NEW = 8
TIMEOUT = 120.0
GENERATED = "soppu_gateway_generated_tokens_total"
Tokens = list[tuple[int, float]]


# --- helpers --------------------------------------------------------------------------------------------------


def _metric(url: str, series: str) -> float:
    """One series of the gateway's /metrics (0 when absent), e.g. ``name_total{label="x"}``."""
    for line in httpx.get(f"{url}/metrics", timeout=TIMEOUT).text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return 0.0


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    """Wait for ``condition`` (a stream is charged when it closes, just after its last byte reached the client;
    a health round runs every 0.5 s). Not an assertion on time: the limit only stops a test that would hang."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not seen in {seconds} s: {what}"
        time.sleep(0.05)


def _engine_tokens(engine: ServiceProcess, prompt: str, adapter_id: str, source: str = "s3") -> Tokens:
    """Our engine's greedy tokens and log-probabilities with the upload itself (PEFT's semantics): the reference."""
    parameters = {"max_new_tokens": MAX_NEW, "details": True, "adapter_id": adapter_id, "adapter_source": source}
    r = httpx.post(f"{engine.url}/generate", json={"inputs": prompt, "parameters": parameters}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return [(t["id"], t["logprob"]) for t in r.json()["details"]["tokens"]]


def _gateway_tokens(gw: FakeDeployment, user: str, prompt: str) -> Tokens:
    """What a client gets through the gateway from the fake, with the official LoRAX client."""
    response = lorax.Client(gw.url, headers=gw.headers(user), timeout=int(TIMEOUT)).generate(
        prompt, max_new_tokens=MAX_NEW, details=True
    )
    assert response.details is not None
    return [(t.id, t.logprob) for t in response.details.tokens]


def _worst(a: Tokens, b: Tokens) -> float:
    """The largest log-probability difference, inf if the greedy tokens differ anywhere."""
    if [i for i, _ in a] != [i for i, _ in b]:
        return float("inf")
    return max(abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True))


def _data(text: str) -> list[Any]:
    payloads = [line[5:] for line in text.splitlines() if line.startswith("data:")]
    return [p if p == "[DONE]" else json.loads(p) for p in payloads]


def _openai(gw: FakeDeployment, user: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.keys[user], max_retries=0, timeout=TIMEOUT)


def _offload(gw: FakeDeployment) -> None:
    """Unload every adapter from the fake (LoRAX's adapter cycling), so the next request for one loads it again
    from the bucket."""
    assert httpx.post(f"{gw.fake.url}/fake/offload", timeout=TIMEOUT).status_code == 200


def _downloads(gw: FakeDeployment) -> list[str]:
    downloads: list[str] = httpx.get(f"{gw.fake.url}/fake/state", timeout=TIMEOUT).json()["downloads"]
    return downloads


# --- 1. the served form, end to end ----------------------------------------------------------------------------

# The exports are float16 (the compressor's "auto": lorax_dtype of this base, whose config.json names no dtype),
# which the fake applies in the model's float32, while our engine applies the float32 upload: each factor rounded
# once to 11 bits moved this tiny model's log-probabilities by at most 1e-4 when measured; a mis-served adapter
# moves them by more than 0.05 or changes a greedy token (the raw uploads below all change one).
CLOSE = 1e-3
APART = 0.05


def test_exports_answer_through_the_gateway_as_our_engine_answers_the_upload(
    fake_deployment: FakeDeployment, engine_process: ServiceProcess
) -> None:
    """The issue's claim: what the pipeline published for an upload LoRAX would mis-serve raw, asked for through
    the gateway, answers on the fake as our engine answers with the upload itself."""
    gw = fake_deployment
    assert gw.export_dtype == "float16"  # what CLOSE was measured with
    for name in VARIANTS:
        version = gw.versions[name]
        config = json.loads(gw.store.get(version.export_keys()[0]).data)
        # The served form: r = lora_alpha, nothing LoRAX 0.12.1 would drop.
        assert config["r"] == config["lora_alpha"] and not config["use_rslora"] and not config["alpha_pattern"]
        weights = load_safetensors(gw.store.get(version.export_keys()[1]).data)
        assert {t.dtype for t in weights.values()} == {torch.float16}, name
        reference = _engine_tokens(engine_process, gw.prompt, gw.reference_ids[name])
        served = _gateway_tokens(gw, name, gw.prompt)
        assert _worst(served, reference) <= CLOSE, (name, served, reference)
        assert f"{version.export_prefix}/{WEIGHTS_NAME}" in _downloads(gw), name  # the fake loaded that export


def test_the_same_uploads_published_raw_answer_differently(
    fake_deployment: FakeDeployment, engine_process: ServiceProcess
) -> None:
    """Without the served form the test above fails: each upload published as it is (its own files under a fresh
    export key) is served by the fake with LoRAX's scaling, not PEFT's."""
    gw = fake_deployment
    for name in VARIANTS:
        reference = _engine_tokens(engine_process, gw.prompt, gw.reference_ids[name])
        raw = _gateway_tokens(gw, f"raw-{name}", gw.prompt)
        assert _worst(raw, reference) > APART, (name, raw, reference)
        assert f"{gw.versions[f'raw-{name}'].export_prefix}/{WEIGHTS_NAME}" in _downloads(gw), name


# --- 2. streams ------------------------------------------------------------------------------------------------


def _charged(gw: FakeDeployment, stream: Callable[[], int]) -> tuple[int, float]:
    """Run ``stream`` (it returns the tokens it saw); that count and the tokens the gateway charged for it."""
    before = _metric(gw.url, GENERATED)
    streamed = stream()
    _wait_for(lambda: _metric(gw.url, GENERATED) != before, "the stream charged")
    return streamed, _metric(gw.url, GENERATED) - before


def test_streams_from_the_fake_pass_through_and_are_charged_what_they_streamed(
    fake_deployment: FakeDeployment, engine_process: ServiceProcess
) -> None:
    """A stream from the fake reaches the client event by event as LoRAX wrote it (``data:{``, no space), with
    the served form's greedy tokens; OpenAI chunks name the adapter the client asked for; every stream is charged
    (``soppu_gateway_generated_tokens_total``) exactly the tokens it carried: /generate_stream, lorax-client's
    stream, OpenAI completions and chat (temperature 0: greedy, as LoRAX samples chat otherwise)."""
    gw = fake_deployment
    user = "rslora"
    reference = [i for i, _ in _engine_tokens(engine_process, gw.prompt, gw.reference_ids[user])]
    body = {"inputs": gw.prompt, "parameters": {"max_new_tokens": MAX_NEW}}
    seen: dict[str, Any] = {}

    def generate_stream() -> int:
        with httpx.stream(
            "POST", f"{gw.url}/generate_stream", json=body, headers=gw.headers(user), timeout=TIMEOUT
        ) as r:
            seen["status"], seen["headers"], seen["text"] = r.status_code, r.headers, r.read().decode()
        return len(_data(seen["text"]))

    streamed, charged = _charged(gw, generate_stream)
    assert seen["status"] == 200 and seen["headers"]["x-adapter-version"] == "1", seen["text"]
    assert seen["text"].startswith("data:{") and "data: " not in seen["text"]  # LoRAX's framing, passed on as is
    events = _data(seen["text"])
    assert [e["token"]["id"] for e in events] == reference  # the served form's greedy answer
    assert events[-1]["generated_text"] == "".join(e["token"]["text"] for e in events)
    assert streamed == charged == MAX_NEW

    client = lorax.Client(gw.url, headers=gw.headers(user), timeout=int(TIMEOUT))
    tokens: list[int] = []

    def lorax_stream() -> int:
        tokens[:] = [e.token.id for e in client.generate_stream(gw.prompt, max_new_tokens=MAX_NEW)]
        return len(tokens)

    streamed, charged = _charged(gw, lorax_stream)
    assert tokens == reference and streamed == charged == MAX_NEW

    openai_client = _openai(gw, user)
    chunks: list[Any] = []

    def completions() -> int:
        chunks[:] = openai_client.completions.create(model="default", prompt=gw.prompt, max_tokens=MAX_NEW, stream=True)
        return len(chunks)

    streamed, charged = _charged(gw, completions)
    assert {c.model for c in chunks} == {"default"}  # the fake wrote "null"; the client asked for "default"
    assert "".join(c.choices[0].text for c in chunks) == events[-1]["generated_text"]
    assert streamed == charged == chunks[-1].usage.completion_tokens == MAX_NEW  # one chunk per token

    def chat() -> int:
        messages: Any = [{"role": "user", "content": gw.prompt}]  # the client's TypedDicts, loosely
        chunks[:] = openai_client.chat.completions.create(
            model="default", messages=messages, max_tokens=MAX_NEW, temperature=0, stream=True
        )
        return len(chunks)

    streamed, charged = _charged(gw, chat)
    assert {c.model for c in chunks} == {"default"}
    assert streamed == charged == chunks[-1].usage.completion_tokens == MAX_NEW


# --- 3. overload -----------------------------------------------------------------------------------------------

OVERLOADED = {"error": "Model is overloaded", "error_type": "overloaded"}
POSTS = '"POST /generate HTTP/1.1"'  # the fake's access log: the gateway sends JSON generations here
STREAMS = '"POST /generate_stream HTTP/1.1"'
INFOS = '"GET /info HTTP/1.1"'
HEALTHS = '"GET /health HTTP/1.1"'


def test_an_overloaded_fake_is_answered_429_after_the_retries_and_stays_up(fake_deployment: FakeDeployment) -> None:
    """The fake's one permit held: LoRAX's 429 (an error event after a 200 for a stream) is retried twice
    (``SOPPU_GATEWAY_RETRIES``, default 2) on the plan's next backend, which with one backend is the same one, then
    passed to the client as 429. Meanwhile LoRAX's /health (a generation through the permit) answers 500; the
    gateway checks /info, so the backend stays up: a backend marked down would be answered 503 no_backend."""
    gw = fake_deployment
    user = "rank4"
    healthy = f'soppu_gateway_backend_healthy{{backend="{gw.fake.url}"}}'
    retries = 'soppu_gateway_upstream_retries_total{reason="overloaded"}'
    assert _gateway_tokens(gw, user, gw.prompt)  # loaded, so only the permit can refuse what follows
    assert httpx.post(f"{gw.fake.url}/fake/hold", timeout=TIMEOUT).json() == {"free": 0}
    try:
        health = httpx.get(f"{gw.fake.url}/health", timeout=TIMEOUT)
        assert (health.status_code, health.json()) == (500, OVERLOADED)
        healths, infos = gw.fake_log_count(HEALTHS), gw.fake_log_count(INFOS)
        # A round's /info answered after the hold; the next one means that round finished.
        _wait_for(lambda: gw.fake_log_count(INFOS) >= infos + 2, "two health checks during the overload")
        assert _metric(gw.url, healthy) == 1
        assert gw.fake_log_count(HEALTHS) == healths  # the gateway never asked /health

        posts, before = gw.fake_log_count(POSTS), _metric(gw.url, retries)
        body = {"inputs": gw.prompt, "parameters": {"max_new_tokens": 2}}
        r = httpx.post(f"{gw.url}/generate", json=body, headers=gw.headers(user), timeout=TIMEOUT)
        assert (r.status_code, r.json()) == (429, OVERLOADED), r.text
        assert (gw.fake_log_count(POSTS) - posts, _metric(gw.url, retries) - before) == (3, 2)

        streams, before = gw.fake_log_count(STREAMS), _metric(gw.url, retries)
        r = httpx.post(f"{gw.url}/generate_stream", json=body, headers=gw.headers(user), timeout=TIMEOUT)
        assert (r.status_code, r.json()) == (429, OVERLOADED), r.text  # the opening error event, as its status
        assert (gw.fake_log_count(STREAMS) - streams, _metric(gw.url, retries) - before) == (3, 2)

        client = lorax.Client(gw.url, headers=gw.headers(user), timeout=int(TIMEOUT))
        with pytest.raises(OverloadedError):
            client.generate(gw.prompt, max_new_tokens=2)
        with pytest.raises(OverloadedError):
            list(client.generate_stream(gw.prompt, max_new_tokens=2))
        with pytest.raises(openai.RateLimitError):
            _openai(gw, user).completions.create(model="default", prompt=gw.prompt, max_tokens=2, stream=True)
        assert _metric(gw.url, healthy) == 1
    finally:
        httpx.post(f"{gw.fake.url}/fake/release", timeout=TIMEOUT)
    assert _gateway_tokens(gw, user, gw.prompt)


# --- 4. a deleted export ---------------------------------------------------------------------------------------

HITS = 'soppu_gateway_resolution_lookups_total{result="hit"}'
MISSES = 'soppu_gateway_resolution_lookups_total{result="miss"}'


def _lookups(gw: FakeDeployment) -> tuple[float, float]:
    return _metric(gw.url, HITS), _metric(gw.url, MISSES)


def _retire(gw: FakeDeployment, user: str) -> None:
    """Delete ``user``'s current export from the bucket and make the fake load adapters again (as LoRAX's
    cycling does): its next request for that version fails to download, 424."""
    version = gw.versions[user]
    assert gw.store.delete_prefix(f"{version.export_prefix}/")
    _offload(gw)


def test_a_deleted_export_without_a_newer_version_is_answered_424(fake_deployment: FakeDeployment) -> None:
    """The gateway re-reads the resolution on a 424 (a lookup past its cache: a miss where the cache would hit)
    and, finding the same version, passes the 424 on without sending it again, storage ids scrubbed."""
    gw = fake_deployment
    user = "gone"
    assert _gateway_tokens(gw, user, gw.prompt)  # resolved (cached for the TTL) and loaded by the fake
    _retire(gw, user)
    body = {"inputs": gw.prompt, "parameters": {"max_new_tokens": 2}}
    for path, sent in (("/generate", POSTS), ("/generate_stream", STREAMS)):
        count, (hits, misses) = gw.fake_log_count(sent), _lookups(gw)
        r = httpx.post(f"{gw.url}{path}", json=body, headers=gw.headers(user), timeout=TIMEOUT)
        assert r.status_code == 424 and r.json()["error_type"] == "generation", (path, r.text)
        assert "No valid adapter config file found" in r.json()["error"], path  # the fake's failed download
        assert "s3://" not in r.text and gw.store.bucket not in r.text and "exports/" not in r.text, path
        assert gw.fake_log_count(sent) - count == 1, path  # the same version: not sent again
        assert tuple(b - a for a, b in zip((hits, misses), _lookups(gw), strict=True)) == (1, 1), path
    client = lorax.Client(gw.url, headers=gw.headers(user), timeout=int(TIMEOUT))
    with pytest.raises(GenerationError):
        client.generate(gw.prompt, max_new_tokens=2)
    with pytest.raises(GenerationError):
        list(client.generate_stream(gw.prompt, max_new_tokens=2))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_deleted_export_of_a_retired_version_is_served_by_the_newer_one(
    fake_deployment: FakeDeployment, engine_process: ServiceProcess, examples_dir: Path, stream: bool
) -> None:
    """A refit published v2 and deleted v1's export while the gateway still held v1 in its cache: the fake's 424
    makes the gateway re-resolve and send the request once more, with v2, whose answer the client gets."""
    gw = fake_deployment
    user = "retired-stream" if stream else "retired-json"
    assert _gateway_tokens(gw, user, gw.prompt)  # v1 resolved (cached for the TTL) and loaded by the fake
    users = json.loads((examples_dir / "users.json").read_text())["users"]
    second = examples_dir / users[1]["adapter"]
    newer = publish_upload(gw.pipeline, user, read_adapter(second))
    assert newer.version == 2
    _retire(gw, user)
    reference = _engine_tokens(engine_process, gw.prompt, str(second), "local")  # a root it may read
    path, sent = ("/generate_stream", STREAMS) if stream else ("/generate", POSTS)
    count = gw.fake_log_count(sent)
    body = {"inputs": gw.prompt, "parameters": {"max_new_tokens": MAX_NEW, "details": True}}
    r = httpx.post(f"{gw.url}{path}", json=body, headers=gw.headers(user), timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["x-adapter-version"] == "2", r.text
    assert gw.fake_log_count(sent) - count == 2  # v1 (424, or its error event), then v2
    if stream:
        got = [(e["token"]["id"], e["token"]["logprob"]) for e in _data(r.text)]
    else:
        got = [(t["id"], t["logprob"]) for t in r.json()["details"]["tokens"]]
    assert _worst(got, reference) <= CLOSE, (got, reference)  # v2's answer: the second user's adapter
    assert f"{newer.export_prefix}/{WEIGHTS_NAME}" in _downloads(gw)
