"""Talking to backends: one keep-alive connection pool (:class:`~gateway_service.transport.StreamTransport`,
shared with the app's ``httpx.AsyncClient``), a timeout on every request, failover along the routing plan, and
retries with exponential backoff.

Requests go straight to the transport, not through ``AsyncClient.send``: the client's cookie jar would carry a
cookie one user's request got back into every other user's requests to that backend, and its redirect and auth
layers have nothing to do here.

- Non-streaming requests: a connection failure moves on to the next backend of the plan (free while untried
  backends remain, then from the retry budget, after a backoff); a 429 from a backend is retried on the next
  one after a backoff while the retry budget lasts, then passed through.
- Streams: a failure to connect, or a connection lost before the stream's first event, moves on (nothing was
  sent, so nothing can be duplicated); a 429 is retried as above. An error event that opens a stream is taken
  for the status LoRAX gives that error outside a stream (:func:`~gateway_service.dialects.stream_error`):
  LoRAX 0.12.1 sends every error, overloads included, as an event after its 200. A stream that started is
  never replayed.
- A read timeout is never retried (the backend may still be generating: a retry would double the load).

Only connection failures mark a backend down; the health checker brings it back.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field

import httpx

from .dialects import stream_error
from .errors import NoBackend, Overloaded, UpstreamTimeout
from .metrics import GatewayMetrics
from .routing import Backend
from .sse import event_data, split_events
from .transport import StreamTransport

__all__ = ["Reply", "StreamReply", "Upstream"]

BodyFor = Callable[[Backend], bytes]  # the upstream body depends on the backend's kind (its adapter id)
# The request may not have reached the backend, or the connection broke before an answer: safe to try again.
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
_DOWN = (httpx.ConnectError, httpx.ConnectTimeout)  # the backend is not there at all


@dataclass(slots=True)
class Reply:
    backend: Backend
    status: int
    headers: Mapping[str, str]  # looked up by lowercase name
    content: bytes


@dataclass(slots=True)
class StreamReply:
    """An open 200 event stream whose first data event is not an error; ``close`` (idempotent) releases the
    connection, which cancels the generation upstream when it has not finished."""

    backend: Backend
    response: httpx.Response
    _rest: AsyncGenerator[bytes, None]  # the events after ``_opening``
    _opening: list[bytes] = field(default_factory=list)  # read to see how the stream opens: comments, first data
    _open: bool = True

    async def first_data(self) -> bytes | None:
        """Read up to the first event with data (kept for :meth:`events`, with the comments before it) and return
        its data; None for a stream without any."""
        async for event in self._rest:
            self._opening.append(event)
            if (data := event_data(event)) is not None:
                return data
        return None

    async def events(self) -> AsyncGenerator[bytes, None]:
        """Every whole event, from the first."""
        for event in self._opening:
            yield event
        async for event in self._rest:
            yield event

    async def close(self) -> None:
        if self._open:
            self._open = False
            self.backend.in_flight -= 1
            try:
                await self._rest.aclose()
            finally:
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
        self._timeouts = timeout.as_dict()
        self._extensions = {"timeout": self._timeouts}
        # The gateway's own transport answers JSON requests without httpx's request and response objects.
        self._fetch = transport.fetch if isinstance(transport, StreamTransport) else None
        self._retries = retries
        self._backoff_s = backoff_s
        self._metrics = metrics
        self._urls: dict[str, httpx.URL] = {}  # parsed once: a backend's few routes

    def _url(self, backend: Backend, path: str) -> httpx.URL:
        target = backend.url + path
        url = self._urls.get(target)
        if url is None:
            url = self._urls[target] = httpx.URL(target)
        return url

    def _request(self, backend: Backend, path: str, body: bytes, headers: dict[str, str]) -> httpx.Request:
        return httpx.Request(
            "POST", self._url(backend, path), content=body, headers=headers, extensions=self._extensions
        )

    async def _exchange(
        self, backend: Backend, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One JSON request to ``backend``, its answer read in full."""
        if self._fetch is not None:
            return await self._fetch(self._url(backend, path), headers, body, self._timeouts)
        r = await self._transport.handle_async_request(self._request(backend, path, body, headers))
        try:
            return r.status_code, r.headers, await r.aread()
        finally:
            await r.aclose()

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
                status, answer_headers, content = await self._exchange(backend, path, body_for(backend), headers)
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
            if status == 429 and await self._retry_overloaded(retries_used):
                retries_used += 1
                continue
            return Reply(backend, status, answer_headers, content)

    async def _retry_overloaded(self, retries_used: int) -> bool:
        """Whether a 429 is tried again (on the plan's next backend, after the backoff): while the budget lasts."""
        if retries_used >= self._retries:
            return False
        await self._pause(retries_used)
        self._metrics.retries.labels(reason="overloaded").inc()
        return True

    async def open_stream(
        self, plan: list[Backend], path: str, body_for: BodyFor, headers: dict[str, str]
    ) -> StreamReply | Reply:
        """An open stream, or the backend's error Reply: any status but 200 (read in full), or an error event
        that opens the stream, with the status LoRAX gives that error outside one."""
        retries_used, attempt = 0, 0
        while True:
            backend = plan[attempt % len(plan)]
            attempt += 1
            try:
                opened = await self._open(backend, self._request(backend, path, body_for(backend), headers))
            except httpx.TransportError as e:
                if isinstance(e, httpx.TimeoutException) and not isinstance(e, httpx.ConnectTimeout):
                    raise _timeout_error(backend, e) from e
                # Not there, or it died before its first event (the engine answers a stream's headers with its
                # first token; LoRAX sends its headers at once): nothing reached the client yet, so the next
                # backend takes the request. Only a backend that is not there at all is marked down, as post()
                # does; one reset connection is not that.
                if isinstance(e, _DOWN):
                    backend.mark_down(f"{type(e).__name__}: {e}")
                if attempt >= len(plan):
                    raise NoBackend(f"no backend could be reached ({type(e).__name__})") from e
                self._metrics.retries.labels(reason="failover").inc()
                continue
            if isinstance(opened, Reply) and opened.status == 429 and await self._retry_overloaded(retries_used):
                retries_used += 1
                continue
            return opened

    async def _open(self, backend: Backend, request: httpx.Request) -> StreamReply | Reply:
        """One attempt on ``backend``: the stream read up to its first data event (its keep-alive comments before
        it are kept), or the error Reply."""
        backend.in_flight += 1
        try:
            response = await self._transport.handle_async_request(request)
        except BaseException:
            backend.in_flight -= 1
            raise
        if response.status_code != 200:
            try:
                content = await response.aread()
            finally:
                backend.in_flight -= 1
                await response.aclose()
            return Reply(backend, response.status_code, response.headers, content)
        stream = StreamReply(backend, response, split_events(response.aiter_bytes()))
        try:
            data = await stream.first_data()
        except BaseException:
            await stream.close()
            raise
        error = None if data is None else stream_error(data)
        if data is None or error is None:
            return stream
        await stream.close()
        self._metrics.stream_errors.labels(error_type=error.error_type).inc()
        return Reply(backend, error.status, httpx.Headers(), data)
