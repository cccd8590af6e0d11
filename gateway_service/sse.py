"""Server-Sent Events through the gateway: cutting an upstream byte stream into whole events (so each can be
inspected, counted or rewritten before it goes on), reading an event's data, the ``data: ...\\n\\n`` framing of
the gateway's own events; the response that always runs its cleanup, so a client that hangs up closes the
upstream stream, is the services' shared :class:`soppu_web.sse.EventStreamResponse`.

Upstream events are read as the SSE standard has them: ``data:`` with or without one space after the colon.
LoRAX 0.12.1 writes none (``data:{...}``: axum's ``Event``, router/src/server.rs:891 and :172); the engine writes
one. Events pass on as they came; the gateway's own are written with the space.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator

from soppu_web.sse import EventStreamResponse

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
