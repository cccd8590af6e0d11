"""Every error the HTTP layer answers with: the engine's typed errors mapped onto LoRAX's statuses and body
``{"error": str, "error_type": str}``, and the app's exception handlers.

The engine raises its error tree (:mod:`inference_service.engine.types`) and knows nothing of HTTP; this is
the one place that says what each error means to a client::

    ValidationFailed     422 validation             bad parameters or prompt (FastAPI's request validation too)
    AdapterRefused       403 adapter_refused        ours: a bucket or path this engine does not serve
    AdapterLoadFailed    424 generation             the adapter could not be loaded
    Overloaded           429 overloaded             the queue is full
    GenerationFailed     424 generation             the forward pass or the sampling failed
    EngineError (other)  500 incomplete_generation  and any unexpected exception
    HTTPException        its status, http           e.g. 503 while the engine is not running
    a stalled body       408 request_timeout        (ours: LoRAX has no code for it)
    a body over the cap  413 too_large              (ours)

Inside a stream the status is already 200: the same body comes as the last event. No error body carries an
exception's text or a storage path.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from soppu_web.lorax_errors import install_lorax_handlers, lorax_error_response

from .engine import AdapterLoadFailed, AdapterRefused, EngineError, GenerationFailed, Overloaded, ValidationFailed

__all__ = ["error_body", "install_handlers", "lorax_error", "refuse_body"]

_LORAX: dict[type[EngineError], tuple[int, str]] = {
    ValidationFailed: (422, "validation"),
    AdapterRefused: (403, "adapter_refused"),
    AdapterLoadFailed: (424, "generation"),
    Overloaded: (429, "overloaded"),
    GenerationFailed: (424, "generation"),
    EngineError: (500, "incomplete_generation"),
}


def lorax_error(e: EngineError) -> tuple[int, str]:
    """The HTTP status and LoRAX ``error_type`` for ``e`` (its nearest mapped class)."""
    for cls in type(e).__mro__:
        if cls in _LORAX:
            return _LORAX[cls]
    raise AssertionError(f"{type(e).__name__} is not an EngineError")  # unreachable: EngineError is mapped


def error_body(e: EngineError) -> dict[str, str]:
    """LoRAX's error body for ``e``; also its in-stream error event."""
    return {"error": e.message, "error_type": lorax_error(e)[1]}


async def _on_engine_error(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, EngineError)
    return JSONResponse(error_body(e), status_code=lorax_error(e)[0])


async def _on_unexpected(_: Request, e: Exception) -> JSONResponse:
    # Not logged here: Starlette re-raises after this answer, and the server logs the traceback. The client gets
    # no exception text: it can hold storage paths or internals.
    status, error_type = _LORAX[EngineError]
    return lorax_error_response(status, "internal error", error_type)


def refuse_body(status: int, message: str) -> bytes:
    """The body of a request refused before it is read: a stalled body (408) or one over the cap (413).
    LoRAX has no codes for them, so ours, in its error body."""
    error_type = "request_timeout" if status == 408 else "too_large"
    return json.dumps({"error": message, "error_type": error_type}).encode()


def install_handlers(app: FastAPI) -> None:
    install_lorax_handlers(app)  # FastAPI's validation: 422 validation, as _LORAX[ValidationFailed] says
    app.add_exception_handler(EngineError, _on_engine_error)
    app.add_exception_handler(Exception, _on_unexpected)
