"""The outermost ASGI layer in front of every route (plain ASGI, not ``BaseHTTPMiddleware``, which costs a task
and a queue per request): the request id, the access log line and the request metrics. The body's size cap and
deadline sit just inside it (:class:`soppu.protocol.request_body.BodyGuard`), so their 413 and 408 are
logged and counted like any answer.

- ``x-request-id``: the client's if it is a sane token, else a new one; on the response, in the log line and
  forwarded upstream (routes read it from ``request.state.request_id``).
- One log line per request, without credentials: id, method, path, status, ms, backend, user.
"""

from __future__ import annotations

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


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics, routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # metric labels only for known paths: a scanner's paths must not mint series
        # The labelled series, looked up once each (prometheus_client's ``labels`` takes a lock per call).
        self._counted: dict[tuple[str, int, str], Any] = {}
        self._timed: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = next((value for name, value in scope["headers"] if name == b"x-request-id"), b"")
        request_id = given.decode() if given and _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
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
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, state, status, time.perf_counter() - started)

    def _record(self, scope: Scope, state: dict[str, Any], status: int, seconds: float) -> None:
        route = state["route"]
        backend = state.get("backend", "none")
        counted = self._counted.get((route, status, backend))
        if counted is None:
            counted = self._counted[route, status, backend] = self.metrics.requests.labels(route, str(status), backend)
        counted.inc()
        timed = self._timed.get(route)
        if timed is None:
            timed = self._timed[route] = self.metrics.latency.labels(route)
        timed.observe(seconds)
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
