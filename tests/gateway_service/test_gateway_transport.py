"""The gateway's HTTP/1.1 transport against a scripted server: the three body framings, connection reuse, a
keep-alive connection the server closed or reset, idle connections given up before the server's keep-alive
ends, a body left unread, and httpx's exceptions for failures."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest

from gateway_service.transport import StreamTransport

Reply = Callable[[asyncio.StreamWriter, int], Awaitable[bool]]  # (writer, request number) -> keep the connection


async def _serve(reply: Reply, scenario: Callable[[str, list[int]], Awaitable[None]]) -> None:
    connections: list[int] = []  # requests seen per connection
    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        connections.append(0)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.lower().split(b"\r\n")
                length = next((int(line[15:]) for line in lines if line.startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                connections[-1] += 1
                count += 1
                keep = await reply(writer, count)
                await writer.drain()
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        await scenario(f"http://127.0.0.1:{port}", connections)


def _run(reply: Reply, scenario: Callable[[str, list[int]], Awaitable[None]]) -> None:
    asyncio.run(_serve(reply, scenario))


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=StreamTransport(), timeout=httpx.Timeout(2.0))


def test_content_length_chunked_and_reuse() -> None:
    async def reply(writer: asyncio.StreamWriter, n: int) -> bool:
        if n % 2:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello")
        else:
            writer.write(b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
            await writer.drain()
            writer.write(b"2;ext=1\r\nde\r\n0\r\ntrailer: x\r\n\r\n")
        return True

    async def scenario(url: str, connections: list[int]) -> None:
        async with _client() as client:
            for _ in range(3):
                r = await client.post(url + "/x", content=b"{}")
                assert (r.status_code, r.content, r.headers["x-a"]) == (200, b"hello", "1")
                r = await client.post(url + "/x", content=b"{}")
                assert (r.status_code, r.content) == (201, b"abcde")
        assert connections == [6]  # one connection for all six

    _run(reply, scenario)


def test_a_closed_idle_connection_is_replaced_and_an_unread_body_is_not_reused() -> None:
    async def reply(writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 2:
            return False  # closes a kept-alive connection as a request arrives on it (a keep-alive timeout race)
        if n == 4:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 1000)
            return True
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        return True

    async def scenario(url: str, connections: list[int]) -> None:
        async with _client() as client:
            assert (await client.post(url, content=b"")).content == b"ok"
            assert (await client.post(url, content=b"")).content == b"ok"  # retried once on a fresh connection
            async with client.stream("POST", url, content=b"") as r:
                assert r.status_code == 200  # body left unread: this connection must not be reused
            assert (await client.post(url, content=b"")).content == b"ok"
        assert connections == [2, 2, 1]

    _run(reply, scenario)


def test_a_reused_connection_reset_before_any_answer_is_replaced() -> None:
    async def reply(writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 2:  # a keep-alive connection reset (not closed) as a request arrives on it
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        return True

    async def scenario(url: str, connections: list[int]) -> None:
        async with _client() as client:
            assert (await client.post(url, content=b"")).content == b"ok"
            assert (await client.post(url, content=b"")).content == b"ok"  # sent again on a fresh connection
        assert connections == [2, 1]

    _run(reply, scenario)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_idle_connections_are_given_up_before_the_servers_keep_alive_ends() -> None:
    async def reply(writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        return True

    async def scenario(url: str, connections: list[int]) -> None:
        clock = FakeClock()
        async with httpx.AsyncClient(transport=StreamTransport(max_idle_s=4.0, clock=clock)) as client:
            await client.get(url)
            clock.now += 3.9
            await client.get(url)  # idle 3.9 s: reused
            clock.now += 4.1
            await client.get(url)  # idle 4.1 s: a new connection, though the server still holds the old one
        assert connections == [2, 1]

    _run(reply, scenario)


def test_a_body_without_length_reads_to_the_end() -> None:
    async def reply(writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        return False

    async def scenario(url: str, connections: list[int]) -> None:
        async with _client() as client:
            assert (await client.get(url)).content == b"all of it"
            assert (await client.get(url)).content == b"all of it"
        assert connections == [1, 1]

    _run(reply, scenario)


def test_failures_raise_httpx_exceptions() -> None:
    async def reply(writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            await asyncio.sleep(1.0)  # slower than the read timeout
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        return True

    async def scenario(url: str, connections: list[int]) -> None:
        async with httpx.AsyncClient(transport=StreamTransport(), timeout=httpx.Timeout(0.2)) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(url)
            assert (await client.get(url)).content == b"ok"  # on a new connection: the timed-out one is dropped
        assert connections == [1, 1]
        with _refusing_url() as refusing:
            async with _client() as client:
                with pytest.raises(httpx.ConnectError):
                    await client.get(refusing)

    _run(reply, scenario)


@contextlib.contextmanager
def _refusing_url() -> Iterator[str]:
    """A URL on which nothing listens: the socket is bound, never listening, so connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_fetch_reads_every_framing_reuses_connections_and_raises_httpx_exceptions() -> None:
    """``fetch`` (the gateway's JSON requests, without httpx's objects) answers as ``handle_async_request``."""
    timeouts = httpx.Timeout(0.5).as_dict()

    async def reply(writer: asyncio.StreamWriter, n: int) -> bool:
        if n in (1, 4):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello")
        elif n == 2:
            writer.write(b"HTTP/1.1 429 Too Many\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        elif n == 3:
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
            return False
        else:
            await asyncio.sleep(1.0)  # slower than the read timeout
        return True

    async def scenario(url: str, connections: list[int]) -> None:
        transport = StreamTransport()
        headers = {"content-type": "application/json", "x-request-id": "r1"}
        assert await transport.fetch(httpx.URL(url + "/x"), headers, b"{}", timeouts) == (
            200, {"content-length": "5", "x-a": "1, 2"}, b"hello"
        )  # fmt: skip
        assert await transport.fetch(httpx.URL(url + "/x"), headers, b"{}", timeouts) == (
            429, {"transfer-encoding": "chunked"}, b"abc"
        )  # fmt: skip
        assert (await transport.fetch(httpx.URL(url + "/x"), headers, b"{}", timeouts))[2] == b"all of it"
        assert (await transport.fetch(httpx.URL(url + "/x"), headers, b"{}", timeouts))[2] == b"hello"
        with pytest.raises(httpx.ReadTimeout):
            await transport.fetch(httpx.URL(url + "/x"), headers, b"{}", timeouts)
        with pytest.raises(httpx.LocalProtocolError):
            await transport.fetch(httpx.URL(url + "/x"), {"tracestate": "a\r\nx-injected: 1"}, b"{}", timeouts)
        await transport.aclose()
        assert connections == [3, 2]  # reused until the server closed it; the timed-out one dropped after

    _run(reply, scenario)
