"""The generation routes' work: admit the request, resolve the adapter, build the upstream body for each
backend kind, forward it, and shape what comes back.

What is forwarded is rebuilt from the parsed request, never copied: the upstream body carries the gateway's
adapter id and source (never the client's), no ``api_token``, no ``merged_adapters`` (it would name other
users' adapters), and ``max_new_tokens`` with the default and cap applied; sampling parameters outside
:mod:`soppu.sampling`'s limits are refused (422) before anything is forwarded; the upstream headers are only
content type, request id and W3C trace context, so no ``Authorization``, ``X-API-Key`` or cookie reaches a
backend. Successful answers pass through as bytes (JSON) or event by event (SSE); the OpenAI routes put the
adapter name back where the backend names a model (its storage id, or LoRAX's ``"null"``). Backend errors keep
their status; an error event that opens a stream is answered as its status (:mod:`~gateway_service.upstream`).
What differs between backend kinds (token counts, OpenAI request forms) is read in
:mod:`~gateway_service.dialects`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import httpx
from fastapi import Response

from soppu.auth import Role
from soppu.sampling import SAMPLING_FIELDS, sampling_problems

from .dialects import (
    Counter,
    generate_tokens,
    lorax_openai_fields,
    model_rewrite,
    one_prompt,
    openai_tokens,
    stream_error,
)
from .errors import InvalidRequest
from .routing import Backend
from .schemas import ChatCompletionRequest, CompletionRequest, GenerateRequest
from .service import Call, Target
from .settings import BackendKind
from .sse import EventStreamResponse, error_event, event_data
from .upstream import BodyFor, Reply, StreamReply

__all__ = ["Mode", "generate", "openai"]

# Sets, not frozensets: pydantic's model_dump takes a set (its IncEx type); these are never changed.
_LORAX_NOT_FORWARDED = {"adapter_id", "adapter_source", "api_token", "merged_adapters"}
_OPENAI_NOT_FORWARDED = {"model", "user_id", "user", "adapter_source", "api_token", "max_completion_tokens"}
_PASSED_HEADERS = ("x-prompt-tokens", "x-generated-tokens", "x-total-tokens", "retry-after")
Rewrite = Callable[[bytes], bytes]
Shaping = Callable[[Backend], tuple[Counter, Rewrite | None]]  # how a stream from that backend is counted, rewritten


class Mode(Enum):
    JSON = "json"  # POST /generate
    LIST = "list"  # POST / without stream: lorax-client reads element 0 of a list
    STREAM = "stream"  # POST /generate_stream, or POST / with stream


_SAMPLING = set(SAMPLING_FIELDS)


def _refuse_bad_sampling(values: dict[str, Any], prefix: str) -> None:
    """The engine's sampling limits, checked before anything is forwarded: a value no backend can sample with
    (``temperature: 1e-300`` gives NaN probabilities) would otherwise fail every request batched with it."""
    problems = sampling_problems(values)
    if problems:
        raise InvalidRequest(problems[0].describe(prefix))


async def _admit(call: Call, named_user: str | None) -> str:
    gateway = call.gateway
    user = gateway.acting_user(call.principal, named_user)
    call.state["user"] = user
    await gateway.limiter.admit(user)  # with Redis: its one round trip
    return user


# A storage id the gateway resolved and sent upstream (``s3://bucket/exports/user/adapter/v00000003``, or a bare
# key under a layout prefix): a backend's error may echo it, and the client must see neither bucket nor layout.
_STORAGE_ID = re.compile(rb"(?:s3://[^\s'\"]+|\b(?:exports|cores|bases|originals)/[^\s'\"]+)")


def _scrub(content: bytes) -> bytes:
    return _STORAGE_ID.sub(b"<the adapter>", content)


def _upstream_error(reply: Reply) -> Response:
    """The backend's error with its status, storage ids scrubbed; a body that is not LoRAX's shape is wrapped into
    it."""
    content = _scrub(reply.content)
    try:
        parsed = json.loads(content)
        ok = isinstance(parsed, dict) and "error" in parsed
    except ValueError:
        ok = False
    if not ok:
        text = content[:200].decode(errors="replace")
        content = json.dumps({"error": f"backend answered {reply.status}: {text}", "error_type": "upstream"}).encode()
    headers = {"retry-after": reply.headers["retry-after"]} if "retry-after" in reply.headers else None
    return Response(content, status_code=reply.status, headers=headers, media_type="application/json")


def _charge(call: Call, user: str, tokens: int) -> None:
    call.gateway.limiter.charge_tokens(user, tokens)
    call.gateway.metrics.tokens.inc(tokens)


def _generate_shaping(backend: Backend) -> tuple[Counter, Rewrite | None]:
    return generate_tokens, None  # the same for both kinds; nothing names a model


class _Relay:
    """One upstream stream relayed to the client event by event; ``close`` releases everything once."""

    def __init__(self, call: Call, user: str, reply: StreamReply, count: Counter, rewrite: Rewrite | None) -> None:
        self._call, self._user, self._reply = call, user, reply
        self._count, self._rewrite = count, rewrite
        self._tokens = 0
        self._closed = False

    async def events(self) -> AsyncGenerator[bytes, None]:
        metrics = self._call.gateway.metrics
        try:
            async for event in self._reply.events():
                data = event_data(event)
                if data is None:  # a comment (keep-alive): passed on as it is
                    yield event
                    continue
                added, total = self._count(data)
                if (added or total) and not self._tokens:
                    route = self._call.state.get("route", "other")
                    metrics.first_token.labels(route=route).observe(time.perf_counter() - self._call.started)
                self._tokens = total if total is not None else self._tokens + added
                error = stream_error(data)
                if error is not None:
                    metrics.stream_errors.labels(error_type=error.error_type).inc()
                    event = _scrub(event)
                yield self._rewrite(event) if self._rewrite else event
        except httpx.TimeoutException:
            metrics.stream_errors.labels(error_type="upstream_timeout").inc()
            yield error_event("the backend sent nothing in time", "upstream_timeout")
        except httpx.TransportError:
            metrics.stream_errors.labels(error_type="upstream_disconnected").inc()
            yield error_event("the connection to the backend broke", "upstream_disconnected")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._reply.close()  # an unfinished stream's connection closes: the backend stops generating
        finally:
            self._call.gateway.gate.leave(self._user)
            _charge(self._call, self._user, self._tokens)


@dataclass(slots=True)
class _Current:
    """The target a request is being served with; replaced once if the backend finds it already retired."""

    target: Target


async def _forward(
    call: Call,
    user: str,
    current: _Current,
    path: str,
    body_for: BodyFor,
    stream: Shaping | None,
) -> Response | Reply:
    """Send to the planned backends. A stream comes back as the response (it now owns the gate slot);
    a JSON answer comes back as the Reply, errors already turned into responses.

    A 424 for a resolved adapter may mean the cached resolution names a version a refit has just retired (its
    files are deleted right after the pointer moves): the resolution is then re-read and, if it changed, the
    request is sent once more with the current version."""
    answer = await _send(call, user, current.target, path, body_for, stream)
    if isinstance(answer, Response) and answer.status_code == 424 and current.target.resolution is not None:
        fresh = await call.gateway.refresh(current.target)
        if fresh is not None:
            current.target = fresh
            answer = await _send(call, user, fresh, path, body_for, stream)
    return answer


async def _send(
    call: Call,
    user: str,
    target: Target,
    path: str,
    body_for: BodyFor,
    stream: Shaping | None,
) -> Response | Reply:
    gateway = call.gateway
    plan = gateway.pool.plan(target.affinity)
    if stream is None:
        reply = await gateway.upstream.post(plan, path, body_for, call.upstream_headers)
        call.state["backend"] = reply.backend.url
        return reply if reply.status == 200 else _upstream_error(reply)
    opened = await gateway.upstream.open_stream(plan, path, body_for, call.upstream_headers)
    call.state["backend"] = opened.backend.url
    if isinstance(opened, Reply):
        return _upstream_error(opened)
    relay = _Relay(call, user, opened, *stream(opened.backend))
    return EventStreamResponse(relay.events(), on_close=relay.close, headers=target.response_headers())


async def _guarded(call: Call, user: str, work: Callable[[], Any]) -> Response:
    """Run ``work`` inside the concurrency caps (global and ``user``'s); a returned event stream keeps its slot
    until it ends."""
    gate = call.gateway.gate
    gate.enter(user)
    handed_over = False
    try:
        response: Response = await work()
        handed_over = isinstance(response, EventStreamResponse)
        return response
    finally:
        if not handed_over:
            gate.leave(user)


async def generate(call: Call, body: GenerateRequest, mode: Mode) -> Response:
    """``/generate``, ``/generate_stream`` and ``/``."""
    p = body.parameters
    if p.merged_adapters is not None:
        raise InvalidRequest("`parameters.merged_adapters` is not allowed through the gateway: it names other adapters")
    _refuse_bad_sampling(p.model_dump(include=_SAMPLING), "parameters.")
    gateway = call.gateway
    user = await _admit(call, body.user_id)
    params = p.model_dump(exclude_none=True, exclude=_LORAX_NOT_FORWARDED)
    params["max_new_tokens"] = gateway.max_new_tokens(p.max_new_tokens)

    async def work() -> Response:
        current = _Current(await gateway.target(user, body.adapter or p.adapter_id))

        def body_for(backend: Backend) -> bytes:
            adapter = current.target.for_kind(backend.kind)
            chosen = {"adapter_id": adapter.adapter_id, "adapter_source": adapter.adapter_source} if adapter else {}
            return json.dumps({"inputs": body.inputs, "parameters": {**params, **chosen}}).encode()

        if mode is Mode.STREAM:
            answer = await _forward(call, user, current, "/generate_stream", body_for, _generate_shaping)
            assert isinstance(answer, Response)
            return answer
        answer = await _forward(call, user, current, "/generate", body_for, None)
        if isinstance(answer, Response):
            return answer
        generated = answer.headers.get("x-generated-tokens")
        _charge(call, user, int(generated) if generated and generated.isdigit() else 0)
        content = answer.content if mode is Mode.JSON else b"[" + answer.content + b"]"
        headers = {k: answer.headers[k] for k in _PASSED_HEADERS if k in answer.headers}
        headers.update(current.target.response_headers())
        return Response(content, headers=headers, media_type="application/json")

    return await _guarded(call, user, work)


async def openai(call: Call, body: CompletionRequest | ChatCompletionRequest, path: str) -> Response:
    """``/v1/completions`` and ``/v1/chat/completions``: ``model`` is the adapter name."""
    gateway = call.gateway
    _refuse_bad_sampling(body.model_dump(include=_SAMPLING), "")  # never the messages: only what is checked
    if isinstance(body, CompletionRequest):
        one_prompt(body.prompt)
    named = body.user_id or (body.user if call.principal.role is not Role.USER else None)
    user = await _admit(call, named)
    fields = body.model_dump(exclude_none=True, exclude=_OPENAI_NOT_FORWARDED)
    asked = body.max_completion_tokens if isinstance(body, ChatCompletionRequest) else None
    fields["max_tokens"] = gateway.max_new_tokens(asked or body.max_tokens)
    fields_for = {BackendKind.ENGINE: fields, BackendKind.LORAX: lorax_openai_fields(fields)}

    async def work() -> Response:
        current = _Current(await gateway.target(user, body.model))

        def model_for(backend: Backend) -> dict[str, str]:
            adapter = current.target.for_kind(backend.kind)
            if adapter is None:  # the base model: the backend's own model id names it
                return {"model": backend.model_id or "default"}
            return {"model": adapter.adapter_id, "adapter_source": adapter.adapter_source}

        def body_for(backend: Backend) -> bytes:
            return json.dumps({**fields_for[backend.kind], **model_for(backend)}).encode()

        if body.stream:
            rewrite = model_rewrite(body.model)

            def shaping(backend: Backend) -> tuple[Counter, Rewrite | None]:
                return openai_tokens(backend.kind), rewrite

            answer = await _forward(call, user, current, path, body_for, shaping)
            assert isinstance(answer, Response)
            return answer
        answer = await _forward(call, user, current, path, body_for, None)
        if isinstance(answer, Response):
            return answer
        data = json.loads(answer.content)
        data["model"] = body.model
        usage = data.get("usage") or {}
        _charge(call, user, int(usage.get("completion_tokens") or 0))
        headers = current.target.response_headers()
        return Response(json.dumps(data).encode(), headers=headers, media_type="application/json")

    return await _guarded(call, user, work)
