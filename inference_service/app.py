"""``create_app()``: the FastAPI app over one :class:`Engine`. Nothing is built at import time; the lifespan
loads the model, starts the engine's batching loop and stops it on shutdown.

Every error answers with LoRAX's body ``{"error": str, "error_type": str}`` and LoRAX's status codes:
422 ``validation`` (our checks and FastAPI's request validation alike), 424 ``generation``, 429 ``overloaded``,
500 ``incomplete_generation``; and ours, 403 ``adapter_refused`` (a bucket or path this engine does not serve).
No error body carries an exception's text or a storage path.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from soppu.protocol.request_body import BodyGuard

from .engine import Engine, EngineConfig, EngineError, SourceRules
from .metrics import ServiceMetrics
from .routes import lorax, openai, ops
from .settings import EngineSettings, get_settings

__all__ = ["create_app"]


def _engine_config(settings: EngineSettings) -> EngineConfig:
    return EngineConfig(
        model_path=settings.model,
        device=settings.device,
        max_batch_size=settings.max_batch_size,
        max_queue=settings.max_queue,
        adapter_cache_bytes=settings.adapter_cache_bytes,
        max_input_length=settings.max_input_length,
        max_total_tokens=settings.max_total_tokens,
        model_id=settings.model_id,
        max_input_chars=settings.max_input_chars,
        sources=SourceRules(settings.served_buckets(), tuple(settings.local_adapter_roots)),
    )


_SHOWN_CHARS = 80


def _error(status: int, message: str, error_type: str) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status)


async def _on_engine_error(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, EngineError)
    return _error(e.status, e.message, e.error_type)


def _shown(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= _SHOWN_CHARS else shown[:_SHOWN_CHARS] + "..."  # never echo a 1 MiB input


async def _on_request_invalid(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, RequestValidationError)
    # "parameters.top_k: Input should be greater than 0 (got 0)": the field path without the leading "body"
    problems = []
    for err in e.errors():
        where = ".".join(str(part) for part in err["loc"] if part != "body")
        got = f" (got {_shown(err['input'])})" if "input" in err and not isinstance(err["input"], dict | list) else ""
        problems.append(f"{where}: {err['msg']}{got}")
    return _error(422, "; ".join(problems), "validation")


async def _on_http_error(_: Request, e: Exception) -> JSONResponse:
    assert isinstance(e, HTTPException)
    return _error(e.status_code, str(e.detail), "http")


async def _on_unexpected(_: Request, e: Exception) -> JSONResponse:
    # Not logged here: Starlette re-raises after this answer, and the server logs the traceback. The client gets
    # no exception text: it can hold storage paths or internals.
    return _error(500, "internal error", EngineError.error_type)


def _refuse_body(status: int, message: str) -> bytes:
    # A stalled body (408) or one over the cap (413): LoRAX has no codes for them, so ours, in its error body.
    error_type = "request_timeout" if status == 408 else "too_large"
    return json.dumps({"error": message, "error_type": error_type}).encode()


def create_app(settings: EngineSettings | None = None, engine: Engine | None = None) -> FastAPI:
    """The app for ``settings`` (default: the environment's). Pass ``engine`` to serve one built elsewhere
    (tests); the app still starts and stops it."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = engine or await asyncio.to_thread(Engine, _engine_config(settings))
        await running.start()
        app.state.engine = running
        try:
            yield
        finally:
            app.state.engine = None
            await running.stop()

    app = FastAPI(
        title="SOPPU inference engine",
        summary="LoRAX-compatible generation with one LoRA adapter per request, batched across adapters",
        version=version("soppu"),  # not soppu.__version__: under pytest, tests/soppu can shadow the package
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = None
    app.state.metrics = ServiceMetrics(lambda: app.state.engine.stats if app.state.engine else None)
    app.add_exception_handler(EngineError, _on_engine_error)
    app.add_exception_handler(RequestValidationError, _on_request_invalid)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
    for module in (lorax, openai, ops):
        app.include_router(module.router)
    # A body that does not arrive within body_timeout_s gets 408 request_timeout (slowloris); one over
    # max_body_bytes, 413 before it is read whole (max_input_chars is checked only once it is parsed).
    limit = settings.max_body_bytes
    app.add_middleware(BodyGuard, timeout_s=settings.body_timeout_s, refuse=_refuse_body, max_bytes=lambda _: limit)
    return app
