"""What the route modules share: the documented error responses and the event-stream response."""

from __future__ import annotations

from typing import Any

from ..schemas import ErrorResponse

__all__ = ["AUTH_ERRORS", "GENERATION_ERRORS", "SSE_RESPONSE"]


def _responses(codes: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": why} for status, why in codes.items()}


AUTH_ERRORS = _responses(
    {
        401: "unauthorized: no key, or an unknown or revoked one",
        403: "forbidden: the key may not act for that user",
        422: "validation: a bad field",
        503: "store_unavailable: the bucket cannot be read",
    }
)
GENERATION_ERRORS = _responses(
    {
        401: "unauthorized: no key, or an unknown or revoked one",
        403: "forbidden: the key may not act for that user",
        404: "adapter_not_found: the user has no adapter of that name",
        413: "request_too_large: the body is over the gateway's limit",
        422: "validation: a bad field (the gateway's or the backend's)",
        424: "generation: the backend could not load the adapter or generate (passed through)",
        408: "request_timeout: the request body did not arrive in time",
        429: "rate_limited: the user's request or token budget is spent; too_many_in_flight: the user has too many "
        "requests inside at once (both with Retry-After); or the backend's overloaded",
        503: "overloaded (Retry-After), no_backend or store_unavailable",
        504: "upstream_timeout: the backend did not answer in time",
    }
)
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "Server-Sent Events", "content": {"text/event-stream": {"schema": {"type": "string"}}}}
}
