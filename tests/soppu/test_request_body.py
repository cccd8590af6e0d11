"""The request-body guard (soppu.protocol.request_body) as plain ASGI, with a scripted client: a stalled body,
a declared and a streamed body over the cap, a response sent before the body was read, and a GET left alone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from soppu.protocol.request_body import BodyGuard, Scope

Message = dict[str, Any]


def _scope(method: str = "POST", headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {"type": "http", "method": method, "path": "/x", "headers": headers or []}


def _refuse(status: int, message: str) -> bytes:
    return json.dumps({"status": status, "message": message}).encode()


async def _echo(
    scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    """An app that reads the whole body (as FastAPI does before a route), then answers 200 with it."""
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _run(
    app: Callable[..., Awaitable[None]],
    scope: Scope,
    chunks: list[bytes],
    *,
    stall: bool = False,
    timeout_s: float = 0.05,
    max_bytes: int | None = None,
) -> list[Message]:
    """Run the guarded app; the client sends ``chunks`` and then, if ``stall``, never the rest."""
    sent: list[Message] = []

    async def scenario() -> None:
        pending = list(chunks)

        async def receive() -> Message:
            if pending:
                chunk = pending.pop(0)
                return {"type": "http.request", "body": chunk, "more_body": bool(pending) or stall}
            await asyncio.Event().wait()  # a stalled client: nothing more, ever
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            sent.append(message)

        guard = BodyGuard(app, timeout_s=timeout_s, refuse=_refuse, max_bytes=lambda _: max_bytes)
        await asyncio.wait_for(guard(scope, receive, send), 30)  # a hang guard only

    asyncio.run(scenario())
    return sent


def _headers(message: Message) -> dict[bytes, bytes]:
    return dict(message.get("headers", []))


def test_a_stalled_body_gets_408_and_the_connection_closes() -> None:
    sent = _run(_echo, _scope(headers=[(b"content-length", b"100")]), [b'{"a": '], stall=True)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]  # the app's answer dropped
    assert sent[0]["status"] == 408 and _headers(sent[0])[b"connection"] == b"close"
    assert json.loads(sent[1]["body"])["status"] == 408


def test_bodies_over_the_cap_get_413_declared_or_streamed() -> None:
    called: list[bool] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        called.append(True)
        await _echo(scope, receive, send)

    declared = _run(app, _scope(headers=[(b"content-length", b"314572800")]), [b"x"], stall=True, max_bytes=1024)
    assert declared[0]["status"] == 413 and not called  # refused on the declared size: the app never ran
    streamed = _run(_echo, _scope(headers=[(b"transfer-encoding", b"chunked")]), [b"x" * 600] * 3, max_bytes=1024)
    assert [m.get("status") for m in streamed] == [413, None] and b"1024" in streamed[1]["body"]
    within = _run(_echo, _scope(headers=[(b"transfer-encoding", b"chunked")]), [b"x" * 500] * 2, max_bytes=1024)
    assert within[0]["status"] == 200 and within[1]["body"] == b"x" * 1000
    assert b"connection" not in _headers(within[0])  # read to the end: the connection may be kept


def test_an_answer_before_the_body_was_read_closes_the_connection() -> None:
    async def refuses_at_once(scope: Scope, receive: Any, send: Any) -> None:  # a 401 before reading
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b"no"})

    sent = _run(refuses_at_once, _scope(headers=[(b"content-length", b"10")]), [b"0123456789"])
    assert sent[0]["status"] == 401 and _headers(sent[0])[b"connection"] == b"close"
    bodiless = _run(refuses_at_once, _scope("GET"), [])  # nothing was coming: keep-alive is untouched
    assert sent[1]["body"] == bodiless[1]["body"] and b"connection" not in _headers(bodiless[0])


def test_an_app_that_fails_on_the_client_gone_after_a_refusal_does_not_reach_the_server() -> None:
    # Found in review: after the guard's 413, Starlette's body reader raised ClientDisconnect up to uvicorn.
    class ClientDisconnect(Exception):
        pass

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        while (await receive())["type"] == "http.request":
            pass
        raise ClientDisconnect

    chunked = _scope(headers=[(b"transfer-encoding", b"chunked")])
    sent = _run(app, chunked, [b"x" * 600, b"x" * 600], max_bytes=1024)  # _run raises if the guard lets it out
    assert sent[0]["status"] == 413
