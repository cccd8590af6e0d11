"""A ``text/event-stream`` response that always closes its event source, so a client that hangs up stops the
work behind the stream (the engine's generation, the gateway's upstream request)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

__all__ = ["EventStreamResponse"]


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response over an async generator of events (``str`` or ``bytes``).

    Starlette stops iterating when the client disconnects (it cancels the task or ``send`` fails) but leaves the
    generator suspended; closing it here runs its ``finally`` now rather than at garbage collection. Then
    ``on_close`` runs, in case ``events`` never started, so had nothing to close. Both are shielded from the
    cancellation that a disconnect brings, because they may await.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncGenerator[str, None] | AsyncGenerator[bytes, None],
        *,
        on_close: Callable[[], Awaitable[None]] | None = None,
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
                if self._on_close is not None:
                    await self._on_close()
