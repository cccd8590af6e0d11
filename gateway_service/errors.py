"""The gateway's error tree. Every refusal answers with LoRAX's body ``{"error": message, "error_type": code}``
(``lorax-client`` parses it) and a stable code::

    GatewayError                 base: .status, .error_type, .message, .headers
    ├── Unauthorized        401  unauthorized        no key, or an unknown / malformed / revoked one
    ├── Forbidden           403  forbidden           the key may not act for that user, or not as admin
    ├── AdapterNotFound     404  adapter_not_found   the user has no adapter of that name
    ├── RequestTimeout      408  request_timeout     the body did not arrive within body_timeout_s
    ├── RequestTooLarge     413  request_too_large   the body is over max_body_bytes
    ├── InvalidRequest      422  validation          a bad field (named in the message)
    ├── RateLimited         429  rate_limited        a per-user bucket is empty (Retry-After)
    ├── TooManyInFlight     429  too_many_in_flight  the user has user_max_in_flight requests inside (Retry-After)
    ├── Overloaded          503  overloaded          the global concurrency cap is reached (Retry-After)
    ├── NoBackend           503  no_backend          no healthy backend, or none could be reached
    ├── StoreDown           503  store_unavailable   the bucket could not be read
    └── UpstreamTimeout     504  upstream_timeout    the backend took longer than upstream_timeout_s

Errors a backend answers with (422 validation, 424 generation, 429 overloaded ...) are not raised: they pass
through with their status and body. An error event that opens a stream (LoRAX 0.12.1 sends every error so, after
its 200) passes through the same way, with the status LoRAX gives its type outside a stream
(:mod:`~gateway_service.dialects`). A core error the gateway answers (``store_unavailable``) takes its status from
:data:`soppu.errors.STATUS`. Codes never change meaning once released.
"""

from __future__ import annotations

import math

from soppu.errors import STATUS, StoreUnavailable

__all__ = [
    "AdapterNotFound",
    "Forbidden",
    "GatewayError",
    "InvalidRequest",
    "NoBackend",
    "Overloaded",
    "RateLimited",
    "RequestTimeout",
    "RequestTooLarge",
    "StoreDown",
    "TooManyInFlight",
    "Unauthorized",
    "UpstreamTimeout",
]


class GatewayError(Exception):
    status: int = 500
    error_type: str = "internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}


class Unauthorized(GatewayError):
    status, error_type = 401, "unauthorized"

    def __init__(self, message: str = "a valid API key is required (Authorization: Bearer or X-API-Key)") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(GatewayError):
    status, error_type = 403, "forbidden"


class AdapterNotFound(GatewayError):
    status, error_type = 404, "adapter_not_found"


class RequestTimeout(GatewayError):
    status, error_type = 408, "request_timeout"


class RequestTooLarge(GatewayError):
    status, error_type = 413, "request_too_large"


class InvalidRequest(GatewayError):
    status, error_type = 422, "validation"


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class RateLimited(GatewayError):
    status, error_type = 429, "rate_limited"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, headers=_retry_after(retry_after_s))


class TooManyInFlight(GatewayError):
    status, error_type = 429, "too_many_in_flight"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message, headers=_retry_after(retry_after_s))


class Overloaded(GatewayError):
    status, error_type = 503, "overloaded"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message, headers=_retry_after(retry_after_s))


class NoBackend(GatewayError):
    status, error_type = 503, "no_backend"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message, headers=_retry_after(retry_after_s))


class StoreDown(GatewayError):
    """The core's StoreUnavailable, answered with its code and its status (soppu.errors.STATUS)."""

    status, error_type = STATUS[StoreUnavailable.code], StoreUnavailable.code


class UpstreamTimeout(GatewayError):
    status, error_type = 504, "upstream_timeout"
