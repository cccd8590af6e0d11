"""Server-Sent Events through the gateway: cutting an upstream byte stream into whole events (so each can be
inspected, counted or rewritten before it goes on), reading an event's data, the ``data: ...\\n\\n`` framing of
the gateway's own events, and a response that always runs its cleanup, so a client that hangs up closes the
upstream stream.

Upstream events are read as the SSE standard has them: ``data:`` with or without one space after the colon.
LoRAX 0.12.1 writes none (``data:{...}``: axum's ``Event``, router/src/server.rs:891 and :172); the engine writes
one. Events pass on as they came; the gateway's own are written with the space.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

__all__ = ["EventStreamResponse", "error_event", "event_data", "split_events"]

_END = b"\n\n"


def error_event(message: str, error_type: str) -> bytes:
    """LoRAX's in-stream error, for failures once the 200 has been sent."""
    return b"data: " + json.dumps({"error": message, "error_type": error_type}).encode() + _END


def event_data(event: bytes) -> bytes | None:
    """The data of one whole event: its ``data:`` lines' values, one leading space dropped from each, joined by
    newlines; None for an event without data (a comment, such as LoRAX's keep-alive ``:``)."""
    values = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
    if not values:
        return None
    return b"\n".join(v.removeprefix(b" ").removesuffix(b"\r") for v in values)


async def split_events(chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """Whole events (each ending in a blank line) as soon as their last byte arrives; a trailing partial
    event is passed on at the end rather than lost."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        if _END not in pending:
            continue
        *events, pending = pending.split(_END)
        for event in events:
            yield event + _END
    if pending.strip():
        yield pending + _END


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response over ``events``; ``on_close`` runs when the response ends for any
    reason (finished, failed, client gone), shielded from the cancellation that a disconnect brings."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncGenerator[bytes, None],
        on_close: Callable[[], Awaitable[None]],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(events, headers={"Cache-Control": "no-cache", **(headers or {})})
        self._events = events
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._events.aclose()
                await self._on_close()
