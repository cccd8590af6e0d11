"""Server-Sent Events: the one definition of the ``data: ...\\n\\n`` framing; the response that always closes
its event source, so a client that hangs up stops its generation in the engine, is the services' shared
:class:`soppu_web.sse.EventStreamResponse`."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from soppu_web.sse import EventStreamResponse

__all__ = ["DONE", "EventStreamResponse", "event"]


def _frame(body: str) -> str:
    return f"data: {body}\n\n"


DONE = _frame("[DONE]")  # the OpenAI routes' end-of-stream marker


def event(data: BaseModel | dict[str, Any]) -> str:
    """One SSE event carrying ``data`` as compact JSON (nulls kept: clients parse every key)."""
    return _frame(data.model_dump_json() if isinstance(data, BaseModel) else json.dumps(data, separators=(",", ":")))
