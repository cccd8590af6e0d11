"""LoRAX's error answer, ``{"error": str, "error_type": str}``, as the gateway and the engine both give it: the
body, the 422 for a request FastAPI's validation refuses, and the answer to an ``HTTPException``.

What each service answers for its own errors, and for an unexpected exception, stays in that service: the
engine keeps LoRAX's ``incomplete_generation`` and leaves the traceback to the server's log, the gateway answers
``internal`` and logs it with the request id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

__all__ = ["install_lorax_handlers", "lorax_error_response", "validation_message"]

_SHOWN_CHARS = 80


def lorax_error_response(
    status: int, message: str, error_type: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status, headers=headers)


def _shown(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= _SHOWN_CHARS else shown[:_SHOWN_CHARS] + "..."  # never echo a 1 MiB input


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """One line per problem, e.g. ``parameters.top_k: Input should be greater than 0 (got 0)``: the field's path
    without the leading ``body``, and the refused value when it is a scalar, cut short."""
    problems = []
    for err in errors:
        where = ".".join(str(part) for part in err["loc"] if part != "body") or "body"
        got = f" (got {_shown(err['input'])})" if "input" in err and not isinstance(err["input"], dict | list) else ""
        problems.append(f"{where}: {err['msg']}{got}")
    return "; ".join(problems)


async def _on_request_invalid(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, RequestValidationError)
    return lorax_error_response(422, validation_message(e.errors()), "validation")


async def _on_http_error(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, HTTPException)
    return lorax_error_response(e.status_code, str(e.detail), "http", e.headers)


def install_lorax_handlers(app: FastAPI) -> None:
    """Answer FastAPI's validation (422 ``validation``) and ``HTTPException`` (its status, ``http``) as LoRAX."""
    app.add_exception_handler(RequestValidationError, _on_request_invalid)
    app.add_exception_handler(HTTPException, _on_http_error)
