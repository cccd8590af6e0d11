"""Talking to backends: one keep-alive connection pool (:class:`~gateway_service.transport.StreamTransport`,
shared with the app's ``httpx.AsyncClient``), a timeout on every request, failover along the routing plan, and
retries with exponential backoff.

Requests go straight to the transport, not through ``AsyncClient.send``: the client's cookie jar would carry a
cookie one user's request got back into every other user's requests to that backend, and its redirect and auth
layers have nothing to do here.

- Non-streaming requests: a connection failure moves on to the next backend of the plan (free while untried
  backends remain, then from the retry budget, after a backoff); a 429 from a backend is retried on the next
  one after a backoff while the retry budget lasts, then passed through.
- Streams: only a failure to connect moves on (nothing was sent, so nothing can be duplicated); a stream that
  started is never replayed.
- A read timeout is never retried (the backend may still be generating: a retry would double the load).

Only connection failures mark a backend down; the health checker brings it back.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from .errors import NoBackend, Overloaded, UpstreamTimeout
from .metrics import GatewayMetrics
from .routing import Backend

__all__ = ["Reply", "StreamReply", "Upstream"]

BodyFor = Callable[[Backend], bytes]  # the upstream body depends on the backend's kind (its adapter id)
# The request may not have reached the backend, or the connection broke before an answer: safe to try again.
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
_DOWN = (httpx.ConnectError, httpx.ConnectTimeout)  # the backend is not there at all


@dataclass(slots=True)
class Reply:
    backend: Backend
    status: int
    headers: httpx.Headers
    content: bytes


@dataclass(slots=True)
class StreamReply:
    """An open 200 event stream; ``close`` (idempotent) releases the connection, which cancels the generation
    upstream when it has not finished."""

    backend: Backend
    response: httpx.Response
    _open: bool = True

    async def close(self) -> None:
        if self._open:
            self._open = False
            self.backend.in_flight -= 1
            await self.response.aclose()


def _timeout_error(backend: Backend, e: httpx.TimeoutException) -> Exception:
    if isinstance(e, httpx.PoolTimeout):
        return Overloaded("no free connection to the backends")
    return UpstreamTimeout(f"backend {backend.url} did not answer in time")


class Upstream:
    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        timeout: httpx.Timeout,
        retries: int,
        backoff_s: float,
        metrics: GatewayMetrics,
    ) -> None:
        self._transport = transport
        self._extensions = {"timeout": timeout.as_dict()}
        self._retries = retries
        self._backoff_s = backoff_s
        self._metrics = metrics
        self._urls: dict[str, httpx.URL] = {}  # parsed once: a backend's few routes

    def _request(self, backend: Backend, path: str, body: bytes, headers: dict[str, str]) -> httpx.Request:
        target = backend.url + path
        url = self._urls.get(target)
        if url is None:
            url = self._urls[target] = httpx.URL(target)
        return httpx.Request("POST", url, content=body, headers=headers, extensions=self._extensions)

    async def _pause(self, retry: int) -> None:
        if self._backoff_s > 0:  # jittered, so retries of many clients do not arrive together
            await asyncio.sleep(self._backoff_s * (2**retry) * random.uniform(0.5, 1.5))

    async def post(self, plan: list[Backend], path: str, body_for: BodyFor, headers: dict[str, str]) -> Reply:
        retries_used, attempt, last_error = 0, 0, ""
        while True:
            backend = plan[attempt % len(plan)]
            attempt += 1
            backend.in_flight += 1
            try:
                r = await self._transport.handle_async_request(self._request(backend, path, body_for(backend), headers))
                content = await r.aread()
            except _RETRYABLE as e:
                if isinstance(e, _DOWN):
                    backend.mark_down(f"{type(e).__name__}: {e}")
                last_error = f"{backend.url}: {type(e).__name__}"
                if attempt < len(plan):  # an untried backend: fail over at once
                    self._metrics.retries.labels(reason="failover").inc()
                    continue
                if retries_used >= self._retries:
                    raise NoBackend(f"no backend could be reached ({last_error})") from e
                await self._pause(retries_used)
                retries_used += 1
                self._metrics.retries.labels(reason="connect").inc()
                continue
            except httpx.TimeoutException as e:
                raise _timeout_error(backend, e) from e
            finally:
                backend.in_flight -= 1
            if r.status_code == 429 and retries_used < self._retries:
                await self._pause(retries_used)
                retries_used += 1
                self._metrics.retries.labels(reason="overloaded").inc()
                continue
            return Reply(backend, r.status_code, r.headers, content)

    async def open_stream(
        self, plan: list[Backend], path: str, body_for: BodyFor, headers: dict[str, str]
    ) -> StreamReply | Reply:
        """An open stream, or the backend's error Reply (any status but 200, read in full)."""
        last: Exception | None = None
        for backend in plan:
            request = self._request(backend, path, body_for(backend), headers)
            backend.in_flight += 1
            try:
                response = await self._transport.handle_async_request(request)
            except httpx.TransportError as e:
                backend.in_flight -= 1
                if isinstance(e, httpx.TimeoutException) and not isinstance(e, httpx.ConnectTimeout):
                    raise _timeout_error(backend, e) from e
                # Not there, or it died before its first byte (the engine answers a stream's headers with its first
                # token): nothing reached the client yet, so the next backend takes the request. Only a backend
                # that is not there at all is marked down, as post() does; one reset connection is not that.
                if isinstance(e, _DOWN):
                    backend.mark_down(f"{type(e).__name__}: {e}")
                self._metrics.retries.labels(reason="failover").inc()
                last = e
                continue
            if response.status_code == 200:
                return StreamReply(backend, response)
            try:
                content = await response.aread()
            finally:
                backend.in_flight -= 1
                await response.aclose()
            return Reply(backend, response.status_code, response.headers, content)
        raise NoBackend(f"no backend could be reached ({type(last).__name__})") from last
