"""The ASGI layer in front of every route (plain ASGI, not ``BaseHTTPMiddleware``, which costs a task and a
queue per request): the request id, the body-size cap, the access log line and the request metrics.

- ``x-request-id``: the client's if it is a sane token, else a new one; on the response, in the log line and
  forwarded upstream (routes read it from ``request.state.request_id``).
- Bodies over ``max_body_bytes`` are refused with 413 before a route sees them (by Content-Length when
  given, else while reading); the body is then replayed to the app, and later ``receive`` calls reach the
  server again, so a client's disconnect is still seen.
- One log line per request, without credentials: id, method, path, status, ms, backend, user.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import GatewayMetrics

__all__ = ["EdgeMiddleware"]

_log = logging.getLogger("gateway_service.access")
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def _too_large(limit: int) -> list[Message]:
    body = json.dumps({"error": f"request body over {limit} bytes", "error_type": "request_too_large"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return [
        {"type": "http.response.start", "status": 413, "headers": headers},
        {"type": "http.response.body", "body": body},
    ]


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: GatewayMetrics, routes: frozenset[str]) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.routes = routes  # metric labels only for known paths: a scanner's paths must not mint series

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"")
        request_id = given.decode() if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        path = scope["path"]
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"], state["started"] = request_id, started
        state["route"] = path if path in self.routes else "other"
        status = 500
        rid_header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), rid_header]}
            await send(message)

        try:
            if scope["method"] not in _NO_BODY:
                body = await self._read_body(headers, receive)
                if body is None:
                    for message in _too_large(self.max_body_bytes):
                        await send_with_id(message)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, state, status, time.perf_counter() - started)

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes | None:
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending the whole body
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _record(self, scope: Scope, state: dict[str, Any], status: int, seconds: float) -> None:
        route = state["route"]
        backend = state.get("backend", "none")
        self.metrics.requests.labels(route=route, status=str(status), backend=backend).inc()
        self.metrics.latency.labels(route=route).observe(seconds)
        if route not in ("/healthz", "/readyz", "/metrics"):
            _log.info(
                "%s %s %s %d %.1fms backend=%s user=%s",
                state["request_id"],
                scope["method"],
                scope["path"],
                status,
                seconds * 1e3,
                backend,
                state.get("user", "-"),
            )


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as the server's receive does

    return replay
