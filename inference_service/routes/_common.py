"""What the route modules share: the documented error responses and the conversions from engine tokens."""

from __future__ import annotations

from typing import Any

from ..engine import EngineError, TokenInfo
from ..errors import error_body
from ..schemas import ErrorResponse, PrefillToken, Token

__all__ = ["ERROR_RESPONSES", "SSE_RESPONSE", "error_event", "prefill_token", "token"]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": why}
    for status, why in {
        422: "validation: bad parameters, or the prompt does not fit",
        424: "generation: the adapter could not be loaded, or generation failed",
        429: "overloaded: the queue is full",
        500: "incomplete_generation",
    }.items()
}

SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "Server-Sent Events", "content": {"text/event-stream": {"schema": {"type": "string"}}}}
}


def token(t: TokenInfo) -> Token:
    if t.logprob is None:  # the engine only leaves this out for the first prompt token
        raise ValueError(f"generated token {t.id} has no logprob")
    return Token(id=t.id, text=t.text, logprob=t.logprob, special=t.special)


def prefill_token(t: TokenInfo) -> PrefillToken:
    return PrefillToken(id=t.id, text=t.text, logprob=t.logprob)


def error_event(e: EngineError) -> dict[str, str]:
    """LoRAX's in-stream error (the HTTP status is already 200 by then)."""
    return error_body(e)
