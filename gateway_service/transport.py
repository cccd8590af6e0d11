"""A lean HTTP/1.1 transport for the gateway's ``httpx.AsyncClient``: keep-alive connections on asyncio streams.

Why not httpx's default (httpcore + h11): on this path the gateway's only job is to pass bytes on, and
httpcore's pure-Python protocol machinery cost about 0.45 ms per request on the 2-core benchmark machine, more
than everything else the gateway does. This transport speaks just what backends answer with (LoRAX's router,
uvicorn): a status line and headers, then a body framed by ``Content-Length``, ``Transfer-Encoding: chunked``
or the end of the connection. Clients keep httpx's API, timeouts and exception types.

:meth:`StreamTransport.fetch` is the same exchange without httpx's request and response objects, for the
gateway's own JSON requests (their construction cost a tenth of the gateway's time per request): it returns the
status, the headers (lowercase names) and the whole body, and raises the same httpx exceptions.

Connections are kept per origin while idle and reused; one is dropped whenever its state is uncertain (an
error, a cancellation, a body not read to the end, ``Connection: close``), so a half-read response can never
leak into the next request. An idle connection is not reused after ``max_idle_s``: set below the backends'
keep-alive timeout, the gateway gives a connection up before the server closes it, so the two never race. If
a reused connection still fails before a single byte of an answer (the server closed it, or reset it, as the
request went out), the request is sent again on another connection: the server never answered it, so it
never processed it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import httpx

__all__ = ["StreamTransport"]

Origin = tuple[str, str, int]
Timeouts = Mapping[str, float | None]  # httpx's: connect, read, write, pool
# A response's head: HTTP version, status, headers, body framing, whether the connection may carry another request.
Head = tuple[bytes, int, list[tuple[bytes, bytes]], tuple[str, int], bool]
_MAX_IDLE_PER_ORIGIN = 1024
_MAX_HEAD_BYTES = 64 * 1024


class _Conn:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.idle_since = 0.0

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()


def _timeouts(request: httpx.Request) -> Timeouts:
    timeouts: Timeouts = request.extensions.get("timeout", {})  # httpx's extensions are a Mapping[str, Any]
    return timeouts


def _origin(url: httpx.URL) -> Origin:
    return (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))


@asynccontextmanager
async def _reading(timeouts: Timeouts, request: httpx.Request | None, what: str) -> AsyncIterator[None]:
    """Map a read's timeout and connection failures onto httpx's exceptions."""
    try:
        async with asyncio.timeout(timeouts.get("read")):
            yield
    except TimeoutError as e:
        raise httpx.ReadTimeout(f"no {what} in time", request=request) from e
    except asyncio.IncompleteReadError as e:
        raise httpx.RemoteProtocolError(f"the server closed the connection during the {what}", request=request) from e
    except (OSError, asyncio.LimitOverrunError, ValueError) as e:
        raise httpx.ReadError(f"{type(e).__name__} while reading the {what}: {e}", request=request) from e


class _Body(httpx.AsyncByteStream):
    """The response body, read as the client iterates; the connection goes back to the pool only when the body
    was read to its end and the server keeps it alive."""

    def __init__(
        self,
        transport: StreamTransport,
        origin: Origin,
        conn: _Conn,
        timeouts: Timeouts,
        request: httpx.Request | None,
        framing: tuple[str, int],
        reusable: bool,
    ) -> None:
        self._transport, self._origin, self._request = transport, origin, request
        self._conn: _Conn | None = conn  # None once closed
        self._timeouts = timeouts
        self._framing, self._size = framing  # "length" (size bytes), "chunked" or "close" (until EOF)
        self._reusable = reusable and self._framing != "close"
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._conn is None:
            raise httpx.StreamClosed()
        reader = self._conn.reader
        if self._framing == "length":
            if self._size:
                async with _reading(self._timeouts, self._request, "body"):
                    data = await reader.readexactly(self._size)
                yield data
        elif self._framing == "chunked":
            while True:
                async with _reading(self._timeouts, self._request, "body"):
                    size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                    data = await reader.readexactly(size + 2)
                if size == 0:
                    async with _reading(self._timeouts, self._request, "body"):
                        while data != b"\r\n":  # trailers, then the blank line (already read when none)
                            data = await reader.readuntil(b"\r\n")
                    break
                yield data[:-2]
        else:
            while True:
                async with _reading(self._timeouts, self._request, "body"):
                    data = await reader.read(65536)
                if not data:
                    break
                yield data
        self._done = True

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and self._reusable:
            self._transport._release(self._origin, conn)
        else:
            conn.close()  # unread bytes or no framing: the connection cannot carry another request


class _Unanswered(Exception):
    """A reused connection failed before a single byte of the answer: the request may be sent again."""


class StreamTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_idle_s: float = 4.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._idle: dict[Origin, deque[_Conn]] = {}
        self._ssl = ssl.create_default_context()
        self._max_idle_s = max_idle_s
        self._clock = clock

    def _release(self, origin: Origin, conn: _Conn) -> None:
        idle = self._idle.setdefault(origin, deque())
        now = self._clock()
        while idle and now - idle[0].idle_since > self._max_idle_s:  # the oldest first: give up the expired
            idle.popleft().close()
        if len(idle) < _MAX_IDLE_PER_ORIGIN and conn.usable():
            conn.idle_since = now
            idle.append(conn)
        else:
            conn.close()

    def _reusable(self, origin: Origin) -> _Conn | None:
        """The most recently used idle connection that is still open and young enough, if any."""
        idle = self._idle.get(origin)
        now = self._clock()
        while idle:
            conn = idle.pop()
            if conn.usable() and now - conn.idle_since <= self._max_idle_s:
                return conn
            conn.close()
        return None

    async def _connect(self, origin: Origin, timeouts: Timeouts, request: httpx.Request | None) -> _Conn:
        scheme, host, port = origin
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                tls = scheme == "https"
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    limit=_MAX_HEAD_BYTES,
                    ssl=self._ssl if tls else None,
                    server_hostname=host if tls else None,
                )
        except TimeoutError as e:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out", request=request) from e
        except OSError as e:
            raise httpx.ConnectError(str(e), request=request) from e
        return _Conn(reader, writer)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        head = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), url.raw_path)]
        head += [b"%s: %s\r\n" % (name, value) for name, value in request.headers.raw]
        payload = b"".join(head) + b"\r\n" + await request.aread()
        origin, timeouts = _origin(url), _timeouts(request)
        conn, (version, status, headers, framing, reusable) = await self._send(origin, timeouts, request, payload)
        body = _Body(self, origin, conn, timeouts, request, framing, reusable)
        return httpx.Response(
            status, headers=headers, stream=body, request=request, extensions={"http_version": version}
        )

    async def fetch(
        self, url: httpx.URL, headers: Mapping[str, str], content: bytes, timeouts: Timeouts
    ) -> tuple[int, dict[str, str], bytes]:
        """``POST url`` with ``headers`` and ``content``: (status, headers with lowercase names, the whole body),
        as :meth:`handle_async_request` would give them, without building httpx's request and response."""
        head = [b"POST %s HTTP/1.1\r\nhost: %s\r\n" % (url.raw_path, url.netloc)]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise httpx.LocalProtocolError(f"a line break in the request header {name!r}")
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        payload = b"".join(head) + b"content-length: %d\r\n\r\n" % len(content) + content
        origin = _origin(url)
        conn, (_, status, raw_headers, framing, reusable) = await self._send(origin, timeouts, None, payload)
        body = _Body(self, origin, conn, timeouts, None, framing, reusable)
        try:
            if framing[0] == "length":  # the common case, read at once
                async with _reading(timeouts, None, "body"):
                    data = await conn.reader.readexactly(framing[1]) if framing[1] else b""
                body._done = True
            else:
                data = b"".join([chunk async for chunk in body])
        finally:
            await body.aclose()
        fields: dict[str, str] = {}
        for raw_name, raw_value in raw_headers:
            key, text = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            fields[key] = f"{fields[key]}, {text}" if key in fields else text  # as httpx joins repeated ones
        return status, fields, data

    async def _send(
        self, origin: Origin, timeouts: Timeouts, request: httpx.Request | None, payload: bytes
    ) -> tuple[_Conn, Head]:
        """Send ``payload`` on a reused connection, or a new one; the connection and the response's head."""
        while (conn := self._reusable(origin)) is not None:
            try:
                return conn, await self._exchange(conn, timeouts, request, payload, reused=True)
            except _Unanswered:
                continue  # the server closed or reset this idle connection as we reused it: nothing was processed
        conn = await self._connect(origin, timeouts, request)
        return conn, await self._exchange(conn, timeouts, request, payload, reused=False)

    async def _exchange(
        self, conn: _Conn, timeouts: Timeouts, request: httpx.Request | None, payload: bytes, *, reused: bool
    ) -> Head:
        """The response's head, after sending ``payload`` on ``conn``."""
        try:
            conn.writer.write(payload)
            try:
                async with asyncio.timeout(timeouts.get("write")):
                    await conn.writer.drain()
            except TimeoutError as e:
                raise httpx.WriteTimeout("sending the request timed out", request=request) from e
            except OSError as e:
                if reused:
                    raise _Unanswered from e
                raise httpx.WriteError(str(e), request=request) from e
            async with _reading(timeouts, request, "response head"):
                if reused:
                    # The first byte on its own: a failure before it is one the request can be sent again after.
                    try:
                        first = await conn.reader.readexactly(1)
                    except (asyncio.IncompleteReadError, ConnectionError) as e:
                        raise _Unanswered from e
                    raw = first + await conn.reader.readuntil(b"\r\n\r\n")
                else:
                    raw = await conn.reader.readuntil(b"\r\n\r\n")
            return _parse_head(raw, request.method if request is not None else "POST", request)  # fetch: POST
        except BaseException:
            conn.close()  # whatever happened, this connection's state is unknown now
            raise

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _parse_head(raw: bytes, method: str, request: httpx.Request | None) -> Head:
    """The :data:`Head` of ``raw`` (the status line and headers), the answer to a ``method`` request."""
    lines = raw[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    try:
        status = int(rest[:3])
    except ValueError:
        raise httpx.RemoteProtocolError(f"bad status line {lines[0][:80]!r}", request=request) from None
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip(), value.strip()))
    fields = {name.lower(): value.lower() for name, value in headers}
    framing: tuple[str, int]
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        framing = ("length", 0)
    elif b"chunked" in fields.get(b"transfer-encoding", b""):
        framing = ("chunked", 0)
    elif b"content-length" in fields:
        try:
            framing = ("length", int(fields[b"content-length"]))
        except ValueError:
            raise httpx.RemoteProtocolError("bad content-length", request=request) from None
    else:
        framing = ("close", 0)
    reusable = fields.get(b"connection") != b"close" and version != b"HTTP/1.0"
    return version, status, headers, framing, reusable
