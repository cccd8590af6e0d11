"""The generation routes' fast lane: a plain ASGI layer in front of FastAPI's router that serves the routes
taking a JSON body and the authenticated caller (``POST /generate``, ``/generate_stream``, ``/``,
``/v1/completions``, ``/v1/chat/completions``) by calling their own endpoint functions with the body validated
by their own models, without FastAPI's per-request routing, dependency solving and body handling: on the
gateway benchmark (``bench/gateway.py``) those were about 40% of the gateway's CPU time per request.

What the lane serves, it serves as the route does: the key is read as the declared security schemes read it
(:func:`~gateway_service.deps.presented_key`), the :class:`~gateway_service.service.Call` is built by
:func:`~gateway_service.deps.make_call`, a :class:`~gateway_service.errors.GatewayError` is answered with its
status, body and headers, anything else propagates to the app's error handler as before. Whatever is off the
plain path goes on to the FastAPI route with the body replayed, so the answer is the route's own: a content type
other than ``application/json``, a body that is not a JSON object or that its model refuses (FastAPI's 422 with
its message, after authentication as before), a gateway not yet running. The routes stay declared in FastAPI, so
the OpenAPI schema is theirs.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, get_type_hints

from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .deps import CallDep, make_call, presented_key
from .errors import GatewayError, Unauthorized
from .service import Gateway

__all__ = ["FastLane", "Lane", "error_response", "lanes"]

# The request headers the lane reads (the first of each, as Starlette's ``headers.get`` gives it).
_READ = {
    b"content-type": "content-type",
    b"authorization": "authorization",
    b"x-api-key": "x-api-key",
    b"traceparent": "traceparent",
    b"tracestate": "tracestate",
}


def error_response(e: GatewayError) -> Response:
    """LoRAX's error body ``{"error", "error_type"}`` with the error's status and headers."""
    return JSONResponse({"error": e.message, "error_type": e.error_type}, status_code=e.status, headers=e.headers)


@dataclass(frozen=True, slots=True)
class Lane:
    model: type[BaseModel]
    endpoint: Callable[..., Awaitable[Response]]


def lanes(routes: Iterable[Any]) -> dict[str, Lane]:
    """The POST routes whose endpoint takes exactly ``body`` (a model) and ``call`` (:data:`CallDep`), by path."""
    found = {}
    for route in routes:
        if not isinstance(route, APIRoute) or route.methods != {"POST"}:
            continue
        hints = get_type_hints(route.endpoint, include_extras=True)
        body = hints.get("body")
        params = list(inspect.signature(route.endpoint).parameters)
        if (
            params == ["body", "call"]
            and hints.get("call") == CallDep
            and isinstance(body, type)
            and issubclass(body, BaseModel)
        ):
            found[route.path] = Lane(body, route.endpoint)
    return found


def _is_json(content_type: str | None) -> bool:
    return content_type is not None and content_type.partition(";")[0].strip().lower() == "application/json"


async def _read(receive: Receive) -> bytes | None:
    """The whole request body; None when the client left first (or the body guard refused it and answered)."""
    message = await receive()
    if message["type"] != "http.request":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """``receive`` with ``body`` given again first: for the route, after the lane has read it."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


class FastLane:
    def __init__(self, app: ASGIApp, *, lanes: dict[str, Lane], gateway: Callable[[], Gateway | None]) -> None:
        self.app = app
        self.lanes = lanes
        self.gateway = gateway  # the running gateway, None before startup and after shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.lanes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        gateway = self.gateway() if lane is not None else None
        if lane is None or gateway is None:
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = _READ.get(name)
            if key is not None and key not in headers:
                headers[key] = value.decode("latin-1")
        if not _is_json(headers.get("content-type")):
            await self.app(scope, receive, send)
            return
        body = await _read(receive)
        if body is None:
            return
        try:
            data = json.loads(body)
        except ValueError:  # the route answers FastAPI's 422 json_invalid
            data = None
        if not isinstance(data, dict):
            await self.app(scope, _replaying(body, receive), send)
            return
        try:
            principal = await gateway.keys.authenticate(
                presented_key(headers.get("authorization"), headers.get("x-api-key"))
            )
            if principal is None:
                raise Unauthorized()
            try:
                parsed = lane.model.model_validate(data)
            except ValidationError:  # the route answers FastAPI's 422 with its message
                await self.app(scope, _replaying(body, receive), send)
                return
            response = await lane.endpoint(body=parsed, call=make_call(gateway, principal, scope["state"], headers))
        except GatewayError as e:
            response = error_response(e)
        await response(scope, receive, send)
