"""Contract tests of the fake LoRAX itself: each checks one behaviour of LoRAX 0.12.1, cited from its source (tag
``v0.12.1``, paths relative to its tree), against the fake running as a real process (``conftest.py``), driven by
the real ``lorax-client`` and ``openai`` packages where a client is what is checked and by raw HTTP where the
bytes are. Adapters come from the session's moto S3 server; "our engine" is the session's inference_service
process (tests/conftest.py), the reference for what an adapter should compute."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from lorax.errors import GenerationError, OverloadedError
from lorax.errors import ValidationError as LoraxValidationError

import lorax
from soppu.adapter import AdapterConfig, LoraAdapter, LoraModule, adapter_files, read_adapter
from soppu.adapter.served_form import served_form
from soppu.store import S3Store
from tests.support.processes import ServiceProcess

MAX_NEW = 6
TIMEOUT = 120.0


# --- helpers --------------------------------------------------------------------------------------------------


def _manifest(examples_dir: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((examples_dir / "users.json").read_text())
    return loaded


def _user(examples_dir: Path, index: int) -> tuple[Path, dict[str, str]]:
    user = _manifest(examples_dir)["users"][index]
    return examples_dir / user["adapter"], {p["prompt"]: p["expected"] for p in user["prompts"]}


def _own_fact(examples_dir: Path, index: int) -> tuple[str, str]:
    """A prompt user ``index`` answers differently from the base model, and that answer."""
    base = _manifest(examples_dir)["base_answers"]
    _, answers = _user(examples_dir, index)
    return next((p, a) for p, a in answers.items() if a != base[p])


def _upload(store: S3Store, key: str, adapter_dir: Path | None = None, *, config: bytes | None = None,
            weights: bytes | None = None) -> str:  # fmt: skip
    """Put an adapter's two files under ``key``; ``s3://bucket/key``."""
    if adapter_dir is not None:
        config = config or (adapter_dir / "adapter_config.json").read_bytes()
        weights = weights or (adapter_dir / "adapter_model.safetensors").read_bytes()
    assert config is not None and weights is not None
    store.put(f"{key}/adapter_config.json", config)
    store.put(f"{key}/adapter_model.safetensors", weights)
    return f"s3://{store.bucket}/{key}"


def _key() -> str:
    # A fresh key per test: the fake's disk cache is keyed by it and never refreshed.
    return f"adapters/{uuid.uuid4().hex[:12]}/v00000001"


def _generate(url: str, prompt: str, adapter_id: str | None = None, **parameters: Any) -> httpx.Response:
    params: dict[str, Any] = {"max_new_tokens": MAX_NEW, "details": True, **parameters}
    if adapter_id is not None:
        params |= {"adapter_id": adapter_id, "adapter_source": "s3"}
    return httpx.post(f"{url}/generate", json={"inputs": prompt, "parameters": params}, timeout=TIMEOUT)


def _tokens(response: httpx.Response) -> list[tuple[int, float]]:
    assert response.status_code == 200, response.text
    return [(t["id"], t["logprob"]) for t in response.json()["details"]["tokens"]]


def _events(url: str, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
    with httpx.stream("POST", f"{url}{path}", json=body, timeout=TIMEOUT) as r:
        return r.status_code, r.read()


def _data(raw: bytes) -> list[str]:
    return [line.removeprefix(b"data:").decode() for line in raw.split(b"\n\n") if line.strip()]


def _rank4(adapter: LoraAdapter, *, rslora: bool) -> LoraAdapter:
    """A raw rank-4 adapter (not LoRAX's served form) whose PEFT delta is the best rank-4 approximation of
    ``adapter``'s: PEFT scales it by ``alpha / sqrt(4)`` with rsLoRA, ``alpha / 4`` without."""
    alpha = 16.0
    scale = alpha / math.sqrt(4) if rslora else alpha / 4
    modules = {}
    for name, module in adapter:
        u, s, vh = torch.linalg.svd(module.delta().double(), full_matrices=False)
        b = (u[:, :4] * s[:4] / scale).float().contiguous()
        modules[name] = LoraModule(b=b, a=vh[:4].float().contiguous(), scaling=scale)
    config: AdapterConfig = replace(adapter.config, r=4, lora_alpha=alpha, use_rslora=rslora)
    return LoraAdapter(config, modules)


# --- request schema and refusals --------------------------------------------------------------------------------


def test_lorax_client_generate_and_stream_on_the_base_model(fake_lorax_url: str, examples_dir: Path) -> None:
    """POST / (server.rs:79-119) answers a one-element list, which lorax-client reads; GenerateResponse and Details
    as lib.rs:459-483 (token ``skipped``, ``skipped_tokens``); StreamResponse events, the last with the text
    (server.rs:1008-1100)."""
    prompt = next(iter(_manifest(examples_dir)["base_answers"]))
    client = lorax.Client(fake_lorax_url, timeout=int(TIMEOUT))
    response = client.generate(prompt, max_new_tokens=MAX_NEW, details=True)
    assert response.details is not None and response.details.generated_tokens == len(response.details.tokens)
    assert _manifest(examples_dir)["base_answers"][prompt] in response.generated_text

    events = list(client.generate_stream(prompt, max_new_tokens=MAX_NEW))
    assert [e.generated_text is None for e in events] == [True] * (len(events) - 1) + [False]
    assert "".join(e.token.text for e in events) == events[-1].generated_text == response.generated_text

    raw = _generate(fake_lorax_url, prompt).json()
    assert set(raw["details"]) == {"finish_reason", "prompt_tokens", "generated_tokens", "skipped_tokens", "seed",
                                   "prefill", "tokens"}  # fmt: skip
    assert set(raw["details"]["tokens"][0]) == {"id", "text", "logprob", "special", "skipped"}
    assert "details" not in _generate(fake_lorax_url, prompt, details=False).json()  # lib.rs:481 skip if None


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
    greedy = _tokens(_generate(fake_lorax_url, "My pet is a"))
    assert _tokens(_generate(fake_lorax_url, "My pet is a", top_p=1.0, temperature=0.0)) == greedy


# --- streams ---------------------------------------------------------------------------------------------------


def test_stream_events_have_no_space_and_errors_come_after_200(fake_lorax_url: str) -> None:
    """Events are axum's ``data:{...}`` (server.rs:891, 1018); a validation error is an event after HTTP 200
    (server.rs:1131-1135), as are best_of and decoder_input_details on a stream (server.rs:980-990)."""
    body = {"inputs": "My pet is a", "parameters": {"max_new_tokens": 3}}
    status, raw = _events(fake_lorax_url, "/generate_stream", body)
    assert status == 200 and raw.startswith(b'data:{"token":{') and b"data: " not in raw
    assert raw.endswith(b"\n\n") and len(_data(raw)) == 3

    for parameters, error in [
        ({"top_k": 0}, "Input validation error: `top_k` must be strictly positive"),
        ({"decoder_input_details": True}, "Input validation error: `decoder_input_details` == true is not supported "
         "when streaming tokens"),
        ({"best_of": 2, "do_sample": True}, "Input validation error: `best_of` != 1 is not supported when streaming "
         "tokens"),
    ]:  # fmt: skip
        status, raw = _events(fake_lorax_url, "/generate_stream", {"inputs": "x", "parameters": parameters})
        assert status == 200
        assert [json.loads(e) for e in _data(raw)] == [{"error": error, "error_type": "validation"}]


def test_adapter_download_failure_is_424_or_an_in_stream_event(fake_lorax_url: str, s3_store: S3Store) -> None:
    """A failed download reaches the request as InferError::GenerationError of the server's message
    (loader.rs:161-172, 287-294; client/src/lib.rs:36-42): 424 on /generate, an event after 200 on a stream."""
    missing = f"s3://{s3_store.bucket}/{_key()}"
    r = _generate(fake_lorax_url, "My pet is a", missing)
    assert r.status_code == 424
    assert r.json()["error_type"] == "generation"
    assert r.json()["error"].startswith("Request failed during generation: Server error: No valid adapter config")
    with pytest.raises(GenerationError):
        lorax.Client(fake_lorax_url).generate("x", adapter_id=missing, adapter_source="s3")

    body = {"inputs": "x", "parameters": {"adapter_id": missing, "adapter_source": "s3"}}
    status, raw = _events(fake_lorax_url, "/generate_stream", body)
    assert status == 200 and json.loads(_data(raw)[0])["error_type"] == "generation"


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

    status, raw = _events(fake_lorax_url, "/v1/completions", {"model": model, "prompt": "My pet is a", "max_tokens": 3,
                                                              "stream": True})  # fmt: skip
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
        r = _generate(fake_lorax_url, "My pet is a")
        assert r.status_code == 429 and r.json() == overloaded
        with pytest.raises(OverloadedError):
            lorax.Client(fake_lorax_url).generate("My pet is a", max_new_tokens=2)
        status, raw = _events(fake_lorax_url, "/generate_stream", {"inputs": "x"})
        assert status == 200 and [json.loads(e) for e in _data(raw)] == [overloaded]
        info = httpx.get(f"{fake_lorax_url}/info", timeout=TIMEOUT)
        assert info.status_code == 200 and info.json()["max_concurrent_requests"] == 4
    finally:
        for _ in range(held):
            httpx.post(f"{fake_lorax_url}/fake/release")
    assert httpx.get(f"{fake_lorax_url}/health", timeout=TIMEOUT).status_code == 200


# --- S3 adapters and the cache ---------------------------------------------------------------------------------


def _downloads(url: str) -> list[str]:
    downloads: list[str] = httpx.get(f"{url}/fake/state").json()["downloads"]
    return downloads


def test_cache_is_by_key_and_never_refreshed(fake_lorax_url: str, s3_store: S3Store, examples_dir: Path) -> None:
    """Weights are downloaded once per key into a directory without the bucket (utils/sources/s3.py:81-84) and
    never again while any ``*.safetensors`` is there (utils/weights.py:481-485); ``adapter_config.json`` is
    fetched again on each load (sources/source.py:132-137). Overwriting the key serves the old weights, before
    and after the adapter is unloaded and loaded again."""
    prompt, answer = _own_fact(examples_dir, 0)
    first, _ = _user(examples_dir, 0)
    second, _ = _user(examples_dir, 1)
    key = _key()
    adapter_id = _upload(s3_store, key, first)
    r = _generate(fake_lorax_url, prompt, adapter_id)
    assert r.status_code == 200 and answer in r.json()["generated_text"]
    assert r.headers["x-adapter-id"] == adapter_id and r.headers["x-adapter-source"] == "s3"  # server.rs:789-792
    assert f"{key}/adapter_model.safetensors" in _downloads(fake_lorax_url)

    _upload(s3_store, key, second)  # new bytes under the same key
    assert answer in _generate(fake_lorax_url, prompt, adapter_id).json()["generated_text"]  # still loaded
    before = len(_downloads(fake_lorax_url))
    httpx.post(f"{fake_lorax_url}/fake/offload")
    assert answer in _generate(fake_lorax_url, prompt, adapter_id).json()["generated_text"]  # cached on disk
    assert _downloads(fake_lorax_url)[before:] == [f"{key}/adapter_config.json"]  # only the config again


def test_cache_ignores_the_bucket_but_reads_its_config(
    fake_lorax_url: str, s3_store: S3Store, moto_server: str, examples_dir: Path
) -> None:
    """Another bucket with the same key is another adapter id, so LoRAX loads it, but its cache directory is the
    same (s3.py:81-84): the weights are the first bucket's, the config the new bucket's (fetched on the load,
    adapter.py:163-165). A config with lora_alpha 0 on the first bucket's weights answers like the base model."""
    prompt, answer = _own_fact(examples_dir, 0)
    base_answer = _manifest(examples_dir)["base_answers"][prompt]
    first, _ = _user(examples_dir, 0)
    second, _ = _user(examples_dir, 1)
    key = _key()
    assert answer in _generate(fake_lorax_url, prompt, _upload(s3_store, key, first)).json()["generated_text"]

    other = S3Store(f"test-{uuid.uuid4().hex[:16]}", endpoint_url=moto_server, access_key="testing",
                    secret_key="testing", region="us-east-1")  # fmt: skip
    other.ensure_bucket()
    same_config = _upload(other, key, second)
    assert answer in _generate(fake_lorax_url, prompt, same_config).json()["generated_text"]  # user 0's weights

    third = S3Store(f"test-{uuid.uuid4().hex[:16]}", endpoint_url=moto_server, access_key="testing",
                    secret_key="testing", region="us-east-1")  # fmt: skip
    third.ensure_bucket()
    config = json.loads((first / "adapter_config.json").read_text()) | {"lora_alpha": 0}
    zero = _upload(third, key, second, config=json.dumps(config).encode())
    assert base_answer in _generate(fake_lorax_url, prompt, zero).json()["generated_text"]


def test_prefix_has_no_trailing_slash(fake_lorax_url: str, s3_store: S3Store, examples_dir: Path) -> None:
    """``bucket.objects.filter(Prefix=key)`` with no slash (utils/sources/s3.py:183-193): ``.../v1`` also lists
    ``.../v10/...``; with nothing at ``.../v1`` itself the load fails for want of a config (source.py:132-137,
    adapters/__init__.py:35), and with both, the stray key is fetched as ``KEY/`` + the key minus KEY
    (s3.py:118-121), ``.../v1/0/...``, which does not exist: the download fails."""
    first, _ = _user(examples_dir, 0)
    root = f"adapters/{uuid.uuid4().hex[:12]}"
    _upload(s3_store, f"{root}/v10", first)
    r = _generate(fake_lorax_url, "My pet is a", f"s3://{s3_store.bucket}/{root}/v1")
    assert r.status_code == 424 and "No valid adapter config file found" in r.json()["error"]
    _upload(s3_store, f"{root}/v1", first)
    r = _generate(fake_lorax_url, "My pet is a", f"s3://{s3_store.bucket}/{root}/v1")
    assert r.status_code == 424 and "404" in r.json()["error"], r.text
    assert _generate(fake_lorax_url, "My pet is a", f"s3://{s3_store.bucket}/{root}/v10").status_code == 200


# --- LoRAX's arithmetic: rank padding and scaling ------------------------------------------------------------------


def _close(a: list[tuple[int, float]], b: list[tuple[int, float]], tol: float) -> bool:
    same_tokens = [i for i, _ in a] == [i for i, _ in b]
    return same_tokens and all(abs(x - y) <= tol for (_, x), (_, y) in zip(a, b, strict=True))


def test_raw_rank4_is_mis_scaled_and_the_served_form_is_not(
    fake_lorax_url: str, engine_process: ServiceProcess, s3_store: S3Store, examples_dir: Path
) -> None:
    """A raw r=4 rsLoRA adapter: LoRAX drops use_rslora (peft 0.4.0, adapters/lora.py:75-84), scales q_proj by
    alpha/4 and, after setting config.r to the padded 8 (lora.py:196-205), v_proj by alpha/8; our engine applies
    alpha/sqrt(4). Its served form (r = lora_alpha, rank 8) answers on the fake as the raw one does on our
    engine."""
    adapter_dir, _ = _user(examples_dir, 0)
    prompt, _ = _own_fact(examples_dir, 0)
    raw = _rank4(read_adapter(adapter_dir), rslora=True)
    files = adapter_files(raw)
    raw_id = _upload(s3_store, _key(), config=files.config, weights=files.weights)
    served = adapter_files(served_form(raw))
    served_id = _upload(s3_store, _key(), config=served.config, weights=served.weights)

    reference = _tokens(_generate(engine_process.url, prompt, raw_id))
    on_lorax = _tokens(_generate(fake_lorax_url, prompt, raw_id))
    assert not _close(on_lorax, reference, 0.05), (on_lorax, reference)
    assert _close(_tokens(_generate(fake_lorax_url, prompt, served_id)), reference, 1e-3)


def test_disable_sgmv_keeps_the_rank(
    fake_lorax_url: str,
    fake_lorax_no_sgmv: ServiceProcess,
    engine_process: ServiceProcess,
    s3_store: S3Store,
    examples_dir: Path,
) -> None:
    """Without the punica kernels nothing is padded (utils/punica.py:46-54), so a raw r=4 adapter (no rsLoRA) is
    scaled alpha/4 on every layer type, as PEFT does; with them, v_proj gets alpha/8."""
    adapter_dir, _ = _user(examples_dir, 0)
    prompt, _ = _own_fact(examples_dir, 0)
    files = adapter_files(_rank4(read_adapter(adapter_dir), rslora=False))
    adapter_id = _upload(s3_store, _key(), config=files.config, weights=files.weights)
    reference = _tokens(_generate(engine_process.url, prompt, adapter_id))
    assert _close(_tokens(_generate(fake_lorax_no_sgmv.url, prompt, adapter_id)), reference, 1e-3)
    assert not _close(_tokens(_generate(fake_lorax_url, prompt, adapter_id)), reference, 0.05)


def test_a_reload_scales_every_type_by_the_padded_rank(
    fake_lorax_url: str, engine_process: ServiceProcess, s3_store: S3Store, examples_dir: Path
) -> None:
    """``load_module_map`` is an lru_cache per adapter id (utils/adapter.py:151-193) holding the config object on
    which the first load set r to the padded rank (adapters/lora.py:196-205): once the adapter is unloaded
    (models/model.py:411-440) and loaded again, every layer type of a raw r=4 adapter is scaled alpha/8, which our
    engine computes for the same weights with lora_alpha halved."""
    adapter_dir, _ = _user(examples_dir, 0)
    prompt, _ = _own_fact(examples_dir, 0)
    raw = _rank4(read_adapter(adapter_dir), rslora=False)
    files = adapter_files(raw)
    adapter_id = _upload(s3_store, _key(), config=files.config, weights=files.weights)
    halved = adapter_files(replace(raw, config=replace(raw.config, lora_alpha=raw.config.lora_alpha / 2)))
    halved_id = _upload(s3_store, _key(), config=halved.config, weights=halved.weights)

    first = _tokens(_generate(fake_lorax_url, prompt, adapter_id))
    httpx.post(f"{fake_lorax_url}/fake/offload")
    again = _tokens(_generate(fake_lorax_url, prompt, adapter_id))
    assert not _close(again, first, 0.01)  # only q_proj changes (from alpha/4 to alpha/8): a small shift
    assert _close(again, _tokens(_generate(engine_process.url, prompt, halved_id)), 1e-3)
