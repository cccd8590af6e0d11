"""What several routers share: the error responses for OpenAPI."""

from __future__ import annotations

from typing import Any

from ..schemas import ErrorBody

__all__ = ["errors"]

_DESCRIPTIONS = {
    400: "malformed request or adapter (missing file, bad header, bad or unsafe archive)",
    401: "no API key, or an unknown, malformed or revoked one (`unauthorized`)",
    403: "the key may not do this for this user (`forbidden`)",
    404: "no such user adapter, version, job, key or cohort (`not_found`)",
    409: "the Idempotency-Key was used with another body (`idempotency_conflict`)",
    413: "over a size limit (`too_large`)",
    415: "not multipart, not safetensors, or a pickle (`unsupported_media_type`, `not_safetensors`, ...)",
    422: "invalid name or request, or an adapter we cannot serve (`invalid_name`, `bad_config`, ...)",
    503: "the store is unavailable or the queue is full: nothing was done; see Retry-After",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]} for status in (*statuses, 503)}
