"""Server-Sent Events: the one definition of the ``data: ...\\n\\n`` framing, and a response that always
closes its event source, so a client that hangs up stops its generation in the engine."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import anyio
from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

__all__ = ["DONE", "EventStreamResponse", "event"]


def _frame(body: str) -> str:
    return f"data: {body}\n\n"


DONE = _frame("[DONE]")  # the OpenAI routes' end-of-stream marker


def event(data: BaseModel | dict[str, Any]) -> str:
    """One SSE event carrying ``data`` as compact JSON (nulls kept: clients parse every key)."""
    return _frame(data.model_dump_json() if isinstance(data, BaseModel) else json.dumps(data, separators=(",", ":")))


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response over an async generator of events.

    Starlette stops iterating when the client disconnects (it cancels the task or ``send`` fails) but leaves the
    generator suspended; closing it here runs its ``finally`` now rather than at garbage collection, which is
    where the engine's generation gets cancelled. Shielded, because the close may itself await.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncGenerator[str, None],
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
                if self._on_close is not None:  # in case ``events`` never started, so had nothing to close
                    await self._on_close()
