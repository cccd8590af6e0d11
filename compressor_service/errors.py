"""Every failure as ``{"error": {"code", "message"}}`` with a fixed status per code.

The core's codes take their status from :data:`soppu.errors.STATUS`, the one table of them (400 a malformed
upload, 404, 409 a conflict with what is stored, 413, 415 not a kind of file we take, 422 well formed but not an
adapter we can serve or compress, 502 ``store_error``, 503 ``store_unavailable``, 500 a bug). The service adds
its own codes:

==========================================================================  ======
code                                                                        status
==========================================================================  ======
``bad_request``                                                              400
``unauthorized`` (no key, or a key that is unknown, malformed or revoked)    401
``forbidden`` (a key without the right to this user or action)               403
``method_not_allowed``                                                       405
``request_timeout`` (the body did not arrive in time; see soppu.protocol)    408
``unsupported_media_type``                                                   415
``invalid_request`` (a field of the request is invalid)                      422
``busy`` (the job queue is full) ``not_ready``                               503
==========================================================================  ======

``store_unavailable``, ``busy`` and ``not_ready`` come with ``Retry-After``. Anything not in the table (a bug)
answers 500 ``internal_error``.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from soppu.errors import STATUS as CORE_STATUS
from soppu.errors import SoppuError

__all__ = ["STATUS", "ApiError", "error_response", "install_handlers"]

log = logging.getLogger(__name__)

# The service's own codes; they never reuse a core code.
SERVICE_STATUS: dict[str, int] = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "method_not_allowed": 405,
    "unsupported_media_type": 415,
    "invalid_request": 422,
    "busy": 503,
    "not_ready": 503,
}
STATUS: dict[str, int] = {**CORE_STATUS, **SERVICE_STATUS}
_RETRY = frozenset({"store_unavailable", "busy", "not_ready"})
_BY_HTTP_STATUS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


class ApiError(Exception):
    """A failure of the HTTP layer itself (auth, media type, queue), with a code from :data:`STATUS`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def error_response(code: str, message: str, retry_after_s: int) -> JSONResponse:
    status = STATUS.get(code, 500)
    headers = {"Retry-After": str(retry_after_s)} if code in _RETRY else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def install_handlers(app: FastAPI, retry_after_s: int) -> None:
    async def on_api_error(_: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, ApiError)
        return error_response(e.code, e.message, retry_after_s)

    async def on_soppu_error(request: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, SoppuError)
        if e.code == "store_unavailable":
            # The details (endpoint, bucket, botocore's words) are for the operator, not the client.
            log.warning("store unavailable during %s %s: %s", request.method, request.url.path, e.message)
            return error_response(
                e.code, "the object store is unavailable; nothing was done, retry later", retry_after_s
            )
        if e.code not in STATUS:
            log.error("unmapped error [%s] during %s %s: %s", e.code, request.method, request.url.path, e.message)
            return error_response("internal_error", f"[{e.code}] {e.message}", retry_after_s)
        if STATUS[e.code] == 500:  # a bug or a broken installation: for the operator too
            log.error("error [%s] during %s %s: %s", e.code, request.method, request.url.path, e.message)
        return error_response(e.code, e.message, retry_after_s)

    async def on_request_invalid(_: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, RequestValidationError)
        problems = []
        for err in e.errors():
            where = ".".join(str(part) for part in err["loc"])
            problems.append(f"{where}: {err['msg']}")
        return error_response("invalid_request", "; ".join(problems), retry_after_s)

    async def on_http_error(_: Request, e: Exception) -> JSONResponse:
        assert isinstance(e, HTTPException)
        return error_response(_BY_HTTP_STATUS.get(e.status_code, "bad_request"), str(e.detail), retry_after_s)

    async def on_unexpected(_: Request, e: Exception) -> JSONResponse:
        # Not logged here: Starlette re-raises after this answer, and the server logs the traceback.
        return error_response("internal_error", f"internal error ({type(e).__name__})", retry_after_s)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(SoppuError, on_soppu_error)
    app.add_exception_handler(RequestValidationError, on_request_invalid)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
