"""The request body at the edge of every service, as plain ASGI (no web framework, so the core may hold it and
all three services share one definition): a deadline for the body to arrive, a size cap, and closing a
connection whose request body was left unread.

- **Deadline** (slowloris): the whole body must arrive within ``timeout_s`` of the request's head, else the
  client gets 408 and the connection is closed. uvicorn has no such setting: its only timeout,
  ``timeout_keep_alive``, runs between requests.
- **Cap**: a body over ``max_bytes(scope)`` bytes gets 413, at once when Content-Length declares it, else as
  soon as the count passes it; nothing past the cap is handed to the app. ``None`` means no cap here (a route
  that spools a large upload applies its own).
- **Unread bodies**: a response that starts before its request's body was read to the end (a 401 ahead of a
  300 MiB upload) says ``Connection: close``, so the server drops the connection instead of reading the rest.

The service renders each refusal's body (``refuse(status, message)``), so every service keeps its own error
shape and codes. After refusing, the guard tells the app the client left (``http.disconnect``) and drops what
the app still sends. Once the body is complete, ``receive`` passes through untouched: an app streaming a
response waits there for the client's disconnect, which has no deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["BodyGuard", "Refuse"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
Refuse = Callable[[int, str], bytes]  # (408 or 413, what happened) -> the JSON error body
_DISCONNECT = {"type": "http.disconnect"}
_CLOSE = (b"connection", b"close")


def _declared(scope: Scope) -> tuple[int | None, bool]:
    """(Content-Length if given, whether a body is coming at all)."""
    length, chunked = None, False
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = int(value) if value.isdigit() else None
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    return length, chunked or bool(length)


class BodyGuard:
    def __init__(
        self,
        app: App,
        *,
        timeout_s: float,
        refuse: Refuse,
        max_bytes: Callable[[Scope], int | None] = lambda _: None,
    ) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.refuse = refuse
        self.max_bytes = max_bytes

    async def _answer(self, send: Send, status: int, message: str) -> None:
        body = self.refuse(status, message)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), _CLOSE]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, has_body = _declared(scope)
        if not has_body:  # GET and friends: nothing to guard, nothing added
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes(scope)
        if limit is not None and declared is not None and declared > limit:
            await self._answer(send, 413, f"request body over {limit} bytes")
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        received = 0
        complete = started = answered = False

        async def refuse(status: int, message: str) -> Message:
            nonlocal answered
            if not started:  # else the app's own response is under way: it ends when the app sees the disconnect
                answered = True
                await self._answer(send, status, message)
            return _DISCONNECT

        async def guarded_receive() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            if answered:
                return _DISCONNECT
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                return await refuse(408, f"the request body did not arrive within {self.timeout_s:g} s")
            if message["type"] != "http.request":
                return message
            received += len(message.get("body", b""))
            if limit is not None and received > limit:
                return await refuse(413, f"request body over {limit} bytes")
            complete = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return  # the guard has answered this request; the app's late answer goes nowhere
            if message["type"] == "http.response.start":
                started = True
                if not complete:
                    message = {**message, "headers": [*message.get("headers", ()), _CLOSE]}
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            # Once the guard has answered, the app sees the client gone (Starlette raises ClientDisconnect from
            # its body reader): expected, and not the server's business. Before that, a failure is the app's.
            if not answered:
                raise
