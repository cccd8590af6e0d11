"""The fake LoRAX's own routes (router/src/server.rs, tag ``v0.12.1``): ``/generate``, ``/generate_stream`` and the
compat ``/`` with their streams (errors after HTTP 200 as an event), ``/health`` (a generation through the permit),
``/info``, ``/tokenize``, and the test hooks under ``/fake/``. The OpenAI routes are :mod:`fake_lorax_openai`'s."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from inference_service.engine import TokenInfo
from tests.lorax_contract.fake_lorax_responses import (
    VERSION,
    adapter_headers,
    details_json,
    error_response,
    full_text,
    json_safe,
    sse,
    timing_headers,
    token_json,
)
from tests.lorax_contract.fake_lorax_schema import BodyRejected, GenerateRequest, LoraxError, parse_body, parse_generate
from tests.lorax_contract.fake_lorax_state import FakeLorax

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


def stream_response(
    fake: FakeLorax,
    request: GenerateRequest,
    callback: StreamEvent,
    end_event: str | None,
) -> _EventStream:
    """server.rs:904-1149: headers at once, then one event per token, the last with the text (and the details
    if asked for), then ``end_event``; every error, validation and overload included, is an event after the 200."""
    headers = {"x-compute-type": "gpu+optimized", "x-compute-characters": str(len(request.inputs))}
    headers |= {"X-Accel-Buffering": "no", **adapter_headers(fake, request)}

    async def events() -> AsyncIterator[str]:
        p = request.parameters
        if (p["best_of"] or 1) != 1:  # server.rs:980-985
            yield sse(LoraxError.validation("`best_of` != 1 is not supported when streaming tokens").body())
            return
        if p["decoder_input_details"]:  # server.rs:986-990
            message = "`decoder_input_details` == true is not supported when streaming tokens"
            yield sse(LoraxError.validation(message).body())
            return
        held: TokenInfo | None = None
        ended = False
        try:
            async with aclosing(fake.items(request)) as items:
                async for item in items:
                    if isinstance(item, TokenInfo):
                        if held is not None:
                            yield sse(callback({"token": token_json(held), "generated_text": None, "details": None}))
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
                    text = full_text(request, item.generated_text)
                    yield sse(callback({"token": token_json(held), "generated_text": text, "details": details}))
                    ended = True
                    if end_event is not None:
                        yield end_event
                    return
        except LoraxError as e:
            if held is not None:
                yield sse(callback({"token": token_json(held), "generated_text": None, "details": None}))
            yield sse(e.body())  # server.rs:1122-1135
            return
        if not ended:  # server.rs:1137-1144
            yield sse(LoraxError("Incomplete generation", "incomplete_generation", 500).body())

    return _EventStream(events(), headers)


async def generate_json(fake: FakeLorax, request: GenerateRequest) -> tuple[dict[str, Any], dict[str, str]]:
    """server.rs:596-842: the body and headers of a non-stream generation. Raises :class:`LoraxError`."""
    p = request.parameters
    if (p["best_of"] or 1) > 1:
        run, others = await fake.run_best_of(request)
    else:
        run, others = await fake.run(request), None
    assert run.result is not None
    body: dict[str, Any] = {"generated_text": full_text(request, run.result.generated_text)}
    if p["details"] or p["decoder_input_details"]:  # server.rs:619, 654-693
        body["details"] = details_json(request, run, others)
    return json_safe(body), {**timing_headers(request, run), **adapter_headers(fake, request)}


async def read_body(request: Request) -> object:
    return parse_body(await request.body(), request.headers.get("content-type"))


def lorax_endpoint(
    handler: Callable[[FakeLorax, Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request.app.state.fake, request)
        except BodyRejected as e:
            return PlainTextResponse(e.text, status_code=e.status)
        except LoraxError as e:
            return error_response(e)

    return endpoint


async def generate(fake: FakeLorax, request: Request) -> Response:
    body, headers = await generate_json(fake, parse_generate(await read_body(request), compat=False))
    return JSONResponse(body, headers=headers)


async def generate_stream(fake: FakeLorax, request: Request) -> Response:
    req = parse_generate(await read_body(request), compat=False)
    return stream_response(fake, req, lambda event: event, None)  # server.rs:891: StreamResponse as is


async def compat_generate(fake: FakeLorax, request: Request) -> Response:
    """server.rs:79-119: ``return_full_text`` defaults to the pipeline tag's choice (false for a local model,
    router/src/main.rs:372-379); a one-element list, or the stream."""
    req = parse_generate(await read_body(request), compat=True)
    if req.parameters["return_full_text"] is None:
        req.parameters["return_full_text"] = False
    if req.stream:
        return stream_response(fake, req, lambda event: event, None)
    body, headers = await generate_json(fake, req)
    return JSONResponse([body], headers=headers)


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
    raw = await read_body(request)
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
