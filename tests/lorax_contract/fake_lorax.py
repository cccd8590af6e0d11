"""A fake LoRAX 0.12.1 for contract tests: its REST API, its errors and its adapter handling, reproduced from a
reading of its source (tag ``v0.12.1``; paths relative to its tree; none of its code is copied), with our own
engine (:mod:`inference_service.engine`, in-process, on the CPU) doing the generation.

Run it as a process (how the tests start it, see ``conftest.py``)::

    python tests/lorax_contract/fake_lorax.py --port 8080 --model DIR [--adapter-source s3] \\
        [--max-concurrent-requests N] [--disable-sgmv] [--huggingface-hub-cache DIR]

with ``S3_ENDPOINT_URL`` and ``AWS_*`` in the environment for S3 adapters, or build it in-process with
:func:`create_app`. What this module owns is the HTTP side (router/src/server.rs, lib.rs, infer.rs, health.rs);
request parsing and validation are :mod:`fake_lorax_schema`'s, adapter download, cache and LoRAX's weight
arithmetic :mod:`fake_lorax_adapters`'.

Reproduced (each at its place below): the routes ``POST /generate``, ``/generate_stream``, ``/`` (and
``/invocations``), ``/v1/completions``, ``/v1/chat/completions``, ``GET /health`` (and ``/``, ``/ping``),
``/info``, ``POST /tokenize``; response bodies and headers; errors as ``{"error", "error_type"}`` with LoRAX's
statuses, and inside a stream as an event after HTTP 200; events written ``data:{...}`` with no space; OpenAI
chunks with ``"model":"null"``; the ``--max-concurrent-requests`` permit (429 ``Model is overloaded``).

Not reproduced (accepted after validation, then ignored): ``typical_p``, ``frequency_penalty``,
``presence_penalty``, ``watermark``, ``truncate``, ``return_k_alternatives``, ``response_format``, tools,
``merged_adapters``; adapter sources other than ``s3``; ``/metrics``; SSE keep-alive comments.

Test hooks that LoRAX does not have, under ``/fake/``: ``POST /fake/offload`` (unload every adapter, as LoRAX's
adapter cycling does), ``POST /fake/hold`` and ``/fake/release`` (take or give back one concurrency permit, so an
overload is reachable without timing), ``GET /fake/state`` (the S3 keys downloaded so far, the cache directory).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from inference_service.engine import (
    Engine,
    EngineConfig,
    EngineError,
    GenerationParams,
    GenerationResult,
    Overloaded,
    SourceRules,
    TokenInfo,
    ValidationFailed,
)
from tests.lorax_contract.fake_lorax_adapters import BASE_MODEL_ADAPTER_ID, AdapterLoader, AdapterLoadError, num_layers
from tests.lorax_contract.fake_lorax_schema import (
    BodyRejected,
    GenerateRequest,
    Limits,
    LoraxError,
    check_length,
    check_parameters,
    parse_body,
    parse_chat,
    parse_completion,
    parse_generate,
    sampling_on,
)
from tests.lorax_contract.lorax_semantics import LoraxModel

__all__ = ["FakeSettings", "create_app", "main"]

VERSION = "0.12.1"
_FINISH_OPENAI = {"length": "length", "eos_token": "stop", "stop_sequence": "content_filter"}  # lib.rs:1430-1438


@dataclass(frozen=True)
class FakeSettings:
    """The launcher flags the fake honours (launcher/src/main.rs; defaults as there unless said otherwise)."""

    model: Path
    model_id: str | None = None  # default: the model directory as given, as LoRAX reports a local model
    adapter_source: str = "hub"  # launcher main.rs:295, the default source of a request naming none
    max_concurrent_requests: int = 128  # main.rs:396
    max_best_of: int = 2
    max_stop_sequences: int = 4
    max_input_length: int | None = None  # default: max_total_tokens - 1
    max_total_tokens: int | None = None  # default: the model's max_position_embeddings
    disable_sgmv: bool = False  # no punica kernels: no rank padding (utils/punica.py:46-54)
    huggingface_hub_cache: Path | None = None  # LoRAX's /data; default: a fresh temporary directory


# --- the concurrency permit (infer.rs:286-295) --------------------------------------------------------------------


class _Permits:
    """A semaphore taken without waiting: none left is LoRAX's 429 ``Model is overloaded``."""

    def __init__(self, count: int) -> None:
        self.free = count

    def take(self) -> None:
        if self.free <= 0:
            raise LoraxError.overloaded()
        self.free -= 1

    def give(self) -> None:
        self.free += 1


# --- one generation ------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What a finished generation reports (infer.rs:400-486's InferResponse)."""

    tokens: list[TokenInfo] = field(default_factory=list)
    result: GenerationResult | None = None
    started: float = field(default_factory=time.perf_counter)


Item = TokenInfo | GenerationResult


class FakeLorax:
    """The state of one fake LoRAX process: the engine, the adapters, the permits, the limits."""

    def __init__(self, settings: FakeSettings, engine: Engine, loader: AdapterLoader, limits: Limits) -> None:
        self.settings = settings
        self.engine = engine
        self.loader = loader
        self.limits = limits
        self.permits = _Permits(settings.max_concurrent_requests)
        self.model_id = settings.model_id or str(settings.model)

    async def items(self, request: GenerateRequest) -> AsyncIterator[Item]:
        """infer.rs:276-355 then the batching task: a permit held until the generation ends, validation, the
        adapter (downloaded and loaded unless loaded), then the tokens. Raises :class:`LoraxError`."""
        self.permits.take()
        try:
            p = request.parameters
            check_parameters(request, self.limits)
            encoded = await self.engine.tokenize(request.inputs, add_special_tokens=request.add_special_tokens)
            max_new_tokens = check_length(len(encoded["input_ids"]), p["max_new_tokens"], self.limits)
            ref = await self._adapter(p["adapter_id"], p["adapter_source"])
            sample = sampling_on(p)
            seed = p["seed"] if p["seed"] is not None else random.getrandbits(63)  # validation.rs:326-328
            params = GenerationParams(
                max_new_tokens=max_new_tokens,
                do_sample=sample,
                temperature=p["temperature"] if sample and p["temperature"] not in (None, 1.0) else None,
                top_k=p["top_k"] if sample else None,
                top_p=p["top_p"] if sample and p["top_p"] is not None and p["top_p"] < 1.0 else None,
                repetition_penalty=p["repetition_penalty"],
                seed=seed if sample else None,
                stop=tuple(p["stop"]),
                ignore_eos_token=p["ignore_eos_token"],
                decoder_input_details=p["decoder_input_details"],
            )
            try:
                async for item in self.engine.generate(request.inputs, params, ref):
                    yield item
            except EngineError as e:
                raise _from_engine(e) from e
        finally:
            self.permits.give()

    async def _adapter(self, adapter_id: str | None, source: str | None) -> Any:
        """adapter.rs:75-94: no id (or an empty one) is the base model; no source is the launcher's default."""
        if not adapter_id or adapter_id == BASE_MODEL_ADAPTER_ID:
            return None
        try:
            return await asyncio.to_thread(self.loader.ref, adapter_id, source or self.settings.adapter_source)
        except AdapterLoadError as e:
            raise LoraxError.generation(f"Server error: {e}") from e  # loader.rs:161-172, client lib.rs:36-42
        except Exception as e:  # boto3, safetensors, OS errors: the server's str(exception) all the same
            raise LoraxError.generation(f"Server error: {e}") from e

    async def run(self, request: GenerateRequest) -> _Run:
        run = _Run()
        async with aclosing(self.items(request)) as items:
            async for item in items:
                if isinstance(item, GenerationResult):
                    run.result = item
                else:
                    run.tokens.append(item)
        if run.result is None:
            raise LoraxError("Incomplete generation", "incomplete_generation", 500)  # infer.rs:479-486
        return run

    async def run_best_of(self, request: GenerateRequest) -> tuple[_Run, list[_Run]]:
        """infer.rs:860-893: ``best_of`` runs at once, the best by mean token logprob, the others returned too."""
        best_of = request.parameters["best_of"] or 1
        if best_of > 1:  # validation.rs:412-424
            if self.limits.max_best_of == 1:
                raise LoraxError.validation("`best_of` != 1 is not allowed for this endpoint")
            if best_of > self.limits.max_best_of:
                raise LoraxError.validation(f"`best_of` must be > 0 and <= {self.limits.max_best_of}. Given: {best_of}")
        runs = list(await asyncio.gather(*(self.run(request) for _ in range(max(best_of, 1)))))
        scores = [sum(t.logprob or 0.0 for t in r.tokens) / max(len(r.tokens), 1) for r in runs]
        best = max(range(len(runs)), key=lambda i: (scores[i], -i))
        return runs.pop(best), runs


def _from_engine(e: EngineError) -> LoraxError:
    """Our engine's refusals in LoRAX's words (its checks come after the fake's own, so rarely reached)."""
    if isinstance(e, ValidationFailed):
        return LoraxError.validation(e.message)
    if isinstance(e, Overloaded):
        return LoraxError.overloaded()
    return LoraxError.generation(f"Server error: {e.message}")


# --- response shapes (router/src/lib.rs) -------------------------------------------------------------------------


def _token(t: TokenInfo) -> dict[str, Any]:
    # lib.rs:404-419: alternative_tokens is left out when None.
    return {"id": t.id, "text": t.text, "logprob": t.logprob, "special": t.special, "skipped": False}


def _generated_text(request: GenerateRequest, text: str) -> str:
    return request.inputs + text if request.parameters["return_full_text"] else text  # server.rs:612-615, 828-832


def _details(request: GenerateRequest, run: _Run, others: list[_Run] | None) -> dict[str, Any]:
    """lib.rs:459-475 (Details) with lib.rs:445-457 (BestOfSequence)."""
    result = run.result
    assert result is not None
    details: dict[str, Any] = {
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "generated_tokens": result.generated_tokens,
        "skipped_tokens": 0,
        "seed": result.seed,
        "prefill": [{"id": t.id, "text": t.text, "logprob": t.logprob} for t in result.prefill],
        "tokens": [_token(t) for t in run.tokens],
    }
    if others is not None:
        details["best_of_sequences"] = [
            {
                "generated_text": _generated_text(request, o.result.generated_text),
                "finish_reason": o.result.finish_reason,
                "generated_tokens": o.result.generated_tokens,
                "seed": o.result.seed,
                "prefill": [{"id": t.id, "text": t.text, "logprob": t.logprob} for t in o.result.prefill],
                "tokens": [_token(t) for t in o.tokens],
            }
            for o in others
            if o.result is not None
        ]
    return details


def _adapter_headers(fake: FakeLorax, request: GenerateRequest) -> dict[str, str]:
    """server.rs:780-792 and 950-964: the adapter headers only when an adapter was asked for."""
    p = request.parameters
    headers = {"x-model-id": fake.model_id}
    if p["adapter_id"] and p["adapter_id"] != BASE_MODEL_ADAPTER_ID:
        headers["x-adapter-id"] = p["adapter_id"]
        headers["x-adapter-source"] = p["adapter_source"] or fake.settings.adapter_source
    return headers


def _timing_headers(request: GenerateRequest, run: _Run) -> dict[str, str]:
    """server.rs:721-776 (values in milliseconds)."""
    result = run.result
    assert result is not None
    total_ms = int((time.perf_counter() - run.started) * 1000)
    per_token = int(result.inference_s * 1000 / max(result.generated_tokens, 1))
    return {
        "x-compute-type": "gpu+optimized",
        "x-compute-time": str(total_ms),
        "x-compute-characters": str(len(request.inputs)),
        "x-total-time": str(total_ms),
        "x-prompt-tokens": str(result.prompt_tokens),
        "x-generated-tokens": str(result.generated_tokens),
        "x-skipped-tokens": "0",
        "x-total-tokens": str(result.prompt_tokens + result.generated_tokens),
        "x-validation-time": "0",
        "x-queue-time": str(int(result.queue_s * 1000)),
        "x-inference-time": str(int(result.inference_s * 1000)),
        "x-time-per-token": str(per_token),
        "x-time-to-first-token": str(per_token),
        "x-time-per-output-token": str(per_token),
    }


def _sse(data: object) -> str:
    """axum's ``Event::json_data``/``data``: ``data:`` and the value with no space, then a blank line."""
    text = data if isinstance(data, str) else json.dumps(_json_safe(data), separators=(",", ":"), allow_nan=False)
    return f"data:{text}\n\n"


def _json_safe(value: Any) -> Any:
    # serde_json writes a NaN or infinite f32 (a first prefill logprob) as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _error(e: LoraxError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)  # server.rs:1586-1607


# --- the routes ------------------------------------------------------------------------------------------------


StreamEvent = Callable[[dict[str, Any]], object]


class _EventStream(StreamingResponse):
    """A stream that always closes its events, so a client that hangs up frees its permit and its engine row at
    once rather than at garbage collection."""

    def __init__(self, events: AsyncIterator[str], headers: dict[str, str]) -> None:
        super().__init__(events, media_type="text/event-stream", headers={"cache-control": "no-cache", **headers})
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._events.aclose()  # type: ignore[attr-defined]


def _stream_response(
    fake: FakeLorax,
    request: GenerateRequest,
    callback: StreamEvent,
    end_event: str | None,
) -> _EventStream:
    """server.rs:904-1149: headers at once, then one event per token, the last with the text (and the details
    if asked for), then ``end_event``; every error, validation and overload included, is an event after the 200."""
    headers = {"x-compute-type": "gpu+optimized", "x-compute-characters": str(len(request.inputs))}
    headers |= {"X-Accel-Buffering": "no", **_adapter_headers(fake, request)}

    async def events() -> AsyncIterator[str]:
        p = request.parameters
        if (p["best_of"] or 1) != 1:  # server.rs:980-985
            yield _sse(LoraxError.validation("`best_of` != 1 is not supported when streaming tokens").body())
            return
        if p["decoder_input_details"]:  # server.rs:986-990
            message = "`decoder_input_details` == true is not supported when streaming tokens"
            yield _sse(LoraxError.validation(message).body())
            return
        held: TokenInfo | None = None
        ended = False
        try:
            async with aclosing(fake.items(request)) as items:
                async for item in items:
                    if isinstance(item, TokenInfo):
                        if held is not None:
                            yield _sse(callback({"token": _token(held), "generated_text": None, "details": None}))
                        held = item
                        continue
                    details = None
                    if p["details"]:  # server.rs:1028-1036
                        details = {
                            "finish_reason": item.finish_reason,
                            "prompt_tokens": item.prompt_tokens,
                            "generated_tokens": item.generated_tokens,
                            "seed": item.seed,
                        }
                    assert held is not None
                    text = _generated_text(request, item.generated_text)
                    yield _sse(callback({"token": _token(held), "generated_text": text, "details": details}))
                    ended = True
                    if end_event is not None:
                        yield end_event
                    return
        except LoraxError as e:
            if held is not None:
                yield _sse(callback({"token": _token(held), "generated_text": None, "details": None}))
            yield _sse(e.body())  # server.rs:1122-1135
            return
        if not ended:  # server.rs:1137-1144
            yield _sse(LoraxError("Incomplete generation", "incomplete_generation", 500).body())

    return _EventStream(events(), headers)


async def _generate_json(fake: FakeLorax, request: GenerateRequest) -> tuple[dict[str, Any], dict[str, str]]:
    """server.rs:596-842: the body and headers of a non-stream generation. Raises :class:`LoraxError`."""
    p = request.parameters
    if (p["best_of"] or 1) > 1:
        run, others = await fake.run_best_of(request)
    else:
        run, others = await fake.run(request), None
    assert run.result is not None
    body: dict[str, Any] = {"generated_text": _generated_text(request, run.result.generated_text)}
    if p["details"] or p["decoder_input_details"]:  # server.rs:619, 654-693
        body["details"] = _details(request, run, others)
    return _json_safe(body), {**_timing_headers(request, run), **_adapter_headers(fake, request)}


async def _body(request: Request) -> object:
    return parse_body(await request.body(), request.headers.get("content-type"))


def _endpoint(handler: Callable[[FakeLorax, Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request.app.state.fake, request)
        except BodyRejected as e:
            return PlainTextResponse(e.text, status_code=e.status)
        except LoraxError as e:
            return _error(e)

    return endpoint


async def generate(fake: FakeLorax, request: Request) -> Response:
    body, headers = await _generate_json(fake, parse_generate(await _body(request), compat=False))
    return JSONResponse(body, headers=headers)


async def generate_stream(fake: FakeLorax, request: Request) -> Response:
    req = parse_generate(await _body(request), compat=False)
    return _stream_response(fake, req, lambda event: event, None)  # server.rs:891: StreamResponse as is


async def compat_generate(fake: FakeLorax, request: Request) -> Response:
    """server.rs:79-119: ``return_full_text`` defaults to the pipeline tag's choice (false for a local model,
    router/src/main.rs:372-379); a one-element list, or the stream."""
    req = parse_generate(await _body(request), compat=True)
    if req.parameters["return_full_text"] is None:
        req.parameters["return_full_text"] = False
    if req.stream:
        return _stream_response(fake, req, lambda event: event, None)
    body, headers = await _generate_json(fake, req)
    return JSONResponse([body], headers=headers)


def _openai_model(fake: FakeLorax, model: str) -> str:
    return "" if model == fake.model_id else model  # server.rs:157-161, 243-247


def _u32(value: int | None) -> int | None:
    return None if value is None else value & 0xFFFFFFFF  # lib.rs:840, 1218: `max_tokens as u32` wraps


def _completion_stream_chunk(event: dict[str, Any]) -> dict[str, Any]:
    """lib.rs:1268-1308."""
    details = event["details"]
    finish = _FINISH_OPENAI[details["finish_reason"]] if details else None
    prompt, completion = (details["prompt_tokens"], details["generated_tokens"]) if details else (0, 0)
    return {
        "id": "null",
        "object": "text_completion",
        "created": 0,
        "model": "null",
        "choices": [
            {
                "index": 0,
                "text": "" if finish == "stop" else event["token"]["text"],
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion},
    }


async def completions(fake: FakeLorax, request: Request) -> Response:
    """server.rs:146-206 with lib.rs:1199-1234 (the request) and 1236-1266 (the response)."""
    c = parse_completion(await _body(request))
    parameters = {
        **parse_generate({"inputs": ""}, compat=False).parameters,
        "adapter_id": _openai_model(fake, c["model"]),
        "adapter_source": c["adapter_source"],
        "api_token": c["api_token"],
        "best_of": c["best_of"],
        "temperature": c["temperature"],
        "repetition_penalty": c["repetition_penalty"],
        "frequency_penalty": c["frequency_penalty"],
        "presence_penalty": c["presence_penalty"],
        "top_k": c["top_k"],
        "top_p": c["top_p"],
        "do_sample": c["n"] is not None,  # sic, lib.rs:1217
        "max_new_tokens": _u32(c["max_tokens"]),
        "ignore_eos_token": bool(c["ignore_eos_token"]),
        "return_full_text": bool(c["echo"]),  # None becomes the compat default, false
        "stop": c["stop"],
        "details": True,
        "decoder_input_details": c["logprobs"] is not None,
        "seed": c["seed"],
    }
    req = GenerateRequest(c["prompt"], parameters, bool(c["stream"]))
    if req.stream:
        return _stream_response(fake, req, _completion_stream_chunk, _sse("[DONE]"))
    body, headers = await _generate_json(fake, req)
    details = body.get("details") or {}
    prompt, completion = details.get("prompt_tokens", 0), details.get("generated_tokens", 0)
    finish = _FINISH_OPENAI[details["finish_reason"]] if details else None
    response = {
        "id": "null",
        "object": "text_completion",
        "created": 0,
        "model": "null",
        "choices": [{"index": 0, "text": body["generated_text"], "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion},
    }
    return JSONResponse(response, headers=headers)


def _chat_stream_chunk(event: dict[str, Any]) -> dict[str, Any]:
    """lib.rs:1383-1428: the last chunk of an eos_token ending has an empty delta; usage only on the last."""
    details = event["details"]
    finish = _FINISH_OPENAI[details["finish_reason"]] if details else None
    delta = {} if finish == "stop" else {"role": "assistant", "content": event["token"]["text"]}
    chunk: dict[str, Any] = {
        "id": "null",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "null",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if details:
        prompt, completion = details["prompt_tokens"], details["generated_tokens"]
        chunk["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion}
    return chunk


async def chat_completions(fake: FakeLorax, request: Request) -> Response:
    """server.rs:231-387 with lib.rs:722-857 (the request). Template and tool errors come before any stream."""
    c, messages = parse_chat(await _body(request))
    model = _openai_model(fake, c["model"])
    if c["response_format"] is not None and c["tools"] is not None:  # server.rs:406-410
        raise LoraxError("Tool error: Response format and tools are mutually exclusive", "tool_error", 422)
    if c["tools"] is not None:
        raise LoraxError("Tool error: this fake LoRAX does not reproduce tools", "tool_error", 422)
    tokenizer = fake.engine.tokenizer
    if not getattr(tokenizer, "chat_template", None):  # infer.rs:387-389
        raise LoraxError.template("template not found")
    try:  # LoRAX renders with minijinja (infer.rs:97-145); transformers' jinja2 agrees on plain templates
        inputs = str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    except Exception as e:
        raise LoraxError.template(str(e)) from e
    greedy = c["temperature"] == 0.0  # lib.rs:806-810
    parameters = {
        **parse_generate({"inputs": ""}, compat=False).parameters,
        "adapter_id": model or None,
        "adapter_source": c["adapter_source"],
        "api_token": c["api_token"],
        "best_of": c["n"],
        "temperature": None if greedy else c["temperature"],
        "repetition_penalty": c["repetition_penalty"],
        "frequency_penalty": c["frequency_penalty"],
        "presence_penalty": c["presence_penalty"],
        "top_k": c["top_k"],
        "top_p": c["top_p"],
        "do_sample": not greedy,
        "max_new_tokens": _u32(c["max_tokens"]),
        "return_full_text": False,
        "stop": c["stop"],
        "details": True,
        "seed": c["seed"],
        "ignore_eos_token": bool(c["ignore_eos_token"]),
    }
    req = GenerateRequest(inputs, parameters, bool(c["stream"]), add_special_tokens=False)
    if req.stream:
        return _stream_response(fake, req, _chat_stream_chunk, _sse("[DONE]"))
    body, headers = await _generate_json(fake, req)
    details = body["details"]
    texts = [body["generated_text"]] + [s["generated_text"] for s in details.get("best_of_sequences", [])]
    finish = _FINISH_OPENAI[details["finish_reason"]]
    prompt, completion = details["prompt_tokens"], details["generated_tokens"]
    response = {
        "id": "null",
        "object": "text_completion",
        "created": int(time.time()),
        "model": fake.model_id,  # server.rs:242, 376-382: the served model, not the request's
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            for i, text in enumerate(texts)
        ],
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion},
        "system_fingerprint": f"{VERSION}-native",  # server.rs:249, no DOCKER_LABEL
    }
    return JSONResponse(response, headers=headers)


async def health(fake: FakeLorax, _: Request) -> Response:
    """server.rs:464-564: a real one-token generation of "Who?" through the permit and the queue; any error is a
    500 with its body, an empty text a 500 ``Empty generation``."""
    probe = parse_generate({"inputs": "Who?", "parameters": {"max_new_tokens": 1}}, compat=False)
    try:
        run = await fake.run(probe)
    except LoraxError as e:
        return JSONResponse(e.body(), status_code=500)
    assert run.result is not None
    if not run.result.generated_text:
        return JSONResponse({"error": "Empty generation", "error_type": "failed healthcheck"}, status_code=500)
    return Response(status_code=200)


async def info(fake: FakeLorax, _: Request) -> Response:
    """server.rs:449-451 with the fields of lib.rs:37-80 (built once at start, server.rs:1431-1451): cheap."""
    limits = fake.limits
    return JSONResponse({
        "model_id": fake.model_id,
        "model_sha": None,
        "model_dtype": str(fake.engine.runner.dtype),
        "model_device_type": fake.engine.runner.device.type,
        "model_pipeline_tag": None,
        "max_concurrent_requests": fake.settings.max_concurrent_requests,
        "max_best_of": limits.max_best_of,
        "max_stop_sequences": limits.max_stop_sequences,
        "max_input_length": limits.max_input_length,
        "max_total_tokens": limits.max_total_tokens,
        "waiting_served_ratio": 1.2,
        "max_batch_total_tokens": limits.max_total_tokens * 32,
        "max_waiting_tokens": 20,
        "validation_workers": 2,
        "eager_prefill": False,
        "version": VERSION,
        "sha": None,
        "docker_label": None,
        "request_logger_url": None,
    })  # fmt: skip


async def tokenize(fake: FakeLorax, request: Request) -> Response:
    """server.rs:1810-1848: ``[{id, text (the token's vocabulary string), start, stop}]``."""
    raw = await _body(request)
    if not isinstance(raw, dict) or not isinstance(raw.get("inputs"), str):
        raise BodyRejected(422, "Failed to deserialize the JSON body into the target type: missing field `inputs`")
    special = raw.get("add_special_tokens")
    encoded = await fake.engine.tokenize(
        raw["inputs"], add_special_tokens=True if special is None else bool(special), return_offsets_mapping=True
    )
    tokens = fake.engine.tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    spans = zip(encoded["input_ids"], tokens, encoded["offset_mapping"], strict=True)
    return JSONResponse([{"id": i, "text": text, "start": s, "stop": e} for i, text, (s, e) in spans])


# --- test hooks (not LoRAX's) --------------------------------------------------------------------------------------


async def fake_offload(fake: FakeLorax, _: Request) -> Response:
    fake.loader.offload()
    return JSONResponse({"offloaded": True})


async def fake_hold(fake: FakeLorax, _: Request) -> Response:
    fake.permits.take()
    return JSONResponse({"free": fake.permits.free})


async def fake_release(fake: FakeLorax, _: Request) -> Response:
    fake.permits.give()
    return JSONResponse({"free": fake.permits.free})


async def fake_state(fake: FakeLorax, _: Request) -> Response:
    return JSONResponse({"downloads": fake.loader.downloads, "cache_dir": str(fake.loader.cache_dir)})


# --- the app -----------------------------------------------------------------------------------------------------


def _limits(settings: FakeSettings) -> Limits:
    config = json.loads((settings.model / "config.json").read_bytes())
    total = settings.max_total_tokens or int(config.get("max_position_embeddings", 2048))
    return Limits(
        max_input_length=settings.max_input_length or total - 1,
        max_total_tokens=total,
        max_stop_sequences=settings.max_stop_sequences,
        max_best_of=settings.max_best_of,
    )


def _build(settings: FakeSettings, work: Path) -> FakeLorax:
    limits = _limits(settings)
    engine_dir = work / "engine-adapters"
    engine_dir.mkdir(parents=True, exist_ok=True)
    engine = Engine(
        EngineConfig(
            model_path=settings.model,
            device="cpu",
            max_queue=1 << 16,  # the fake's permit is the only limit, as in LoRAX
            max_input_length=limits.max_input_length,
            max_total_tokens=limits.max_total_tokens,
            model_id=settings.model_id or str(settings.model),
            max_input_chars=1 << 24,
            sources=SourceRules((), (engine_dir,)),
        )
    )
    shapes = dict(engine.runner.shapes.modules)
    model = LoraxModel(num_layers=num_layers(shapes), dtype=engine.runner.dtype, sgmv=not settings.disable_sgmv)
    cache = settings.huggingface_hub_cache or work / "hub-cache"
    loader = AdapterLoader(cache, engine_dir, model, settings.model_id or str(settings.model), shapes)
    return FakeLorax(settings, engine, loader, limits)


def create_app(settings: FakeSettings) -> Starlette:
    """The fake LoRAX over ``settings``; the engine loads and starts in the lifespan."""
    work = Path(tempfile.mkdtemp(prefix="fake-lorax-"))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        fake = await asyncio.to_thread(_build, settings, work)
        await fake.engine.start()
        app.state.fake = fake
        try:
            yield
        finally:
            await fake.engine.stop()

    routes = [
        Route("/", _endpoint(compat_generate), methods=["POST"]),
        Route("/invocations", _endpoint(compat_generate), methods=["POST"]),  # server.rs:1486
        Route("/generate", _endpoint(generate), methods=["POST"]),
        Route("/generate_stream", _endpoint(generate_stream), methods=["POST"]),
        Route("/v1/completions", _endpoint(completions), methods=["POST"]),
        Route("/v1/chat/completions", _endpoint(chat_completions), methods=["POST"]),
        Route("/", _endpoint(health), methods=["GET"]),  # server.rs:1489
        Route("/health", _endpoint(health), methods=["GET"]),
        Route("/ping", _endpoint(health), methods=["GET"]),
        Route("/info", _endpoint(info), methods=["GET"]),
        Route("/tokenize", _endpoint(tokenize), methods=["POST"]),
        Route("/fake/offload", _endpoint(fake_offload), methods=["POST"]),
        Route("/fake/hold", _endpoint(fake_hold), methods=["POST"]),
        Route("/fake/release", _endpoint(fake_release), methods=["POST"]),
        Route("/fake/state", _endpoint(fake_state), methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="A fake LoRAX 0.12.1 on the CPU over SOPPU's engine (tests only).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--model", type=Path, required=True, help="the base model directory (LoRAX's --model-id)")
    parser.add_argument("--model-id", help="the id /info reports (default: --model as given)")
    parser.add_argument("--adapter-source", default="hub", help="the source of a request that names none")
    parser.add_argument("--max-concurrent-requests", type=int, default=128)
    parser.add_argument("--max-best-of", type=int, default=2)
    parser.add_argument("--max-stop-sequences", type=int, default=4)
    parser.add_argument("--max-input-length", type=int)
    parser.add_argument("--max-total-tokens", type=int)
    parser.add_argument("--disable-sgmv", action="store_true", help="no punica kernels: ranks are not padded")
    parser.add_argument("--huggingface-hub-cache", type=Path, help="the adapter cache (LoRAX's /data)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = FakeSettings(
        model=args.model,
        model_id=args.model_id,
        adapter_source=args.adapter_source,
        max_concurrent_requests=args.max_concurrent_requests,
        max_best_of=args.max_best_of,
        max_stop_sequences=args.max_stop_sequences,
        max_input_length=args.max_input_length,
        max_total_tokens=args.max_total_tokens,
        disable_sgmv=args.disable_sgmv,
        huggingface_hub_cache=args.huggingface_hub_cache,
    )
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", timeout_keep_alive=75)


if __name__ == "__main__":
    sys.exit(main())
