"""``create_app()``: the FastAPI app over one :class:`Engine`. Nothing is built at import time; the lifespan
loads the model, starts the engine's batching loop and stops it on shutdown.

Every error answers with LoRAX's body ``{"error": str, "error_type": str}`` and LoRAX's status codes; the
mapping from the engine's typed errors and the handlers live in :mod:`inference_service.errors`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI

from soppu.protocol.request_body import BodyGuard

from .engine import Engine, EngineConfig, SourceRules
from .errors import install_handlers, refuse_body
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


def create_app(settings: EngineSettings | None = None, engine: Engine | None = None) -> FastAPI:
    """The app for ``settings`` (default: the environment's). Pass ``engine`` to serve one built elsewhere
    (tests); the app still starts and stops it."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = engine if engine is not None else await asyncio.to_thread(Engine, _engine_config(settings))
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
    install_handlers(app)
    for module in (lorax, openai, ops):
        app.include_router(module.router)
    # A body that does not arrive within body_timeout_s gets 408 request_timeout (slowloris); one over
    # max_body_bytes, 413 before it is read whole (max_input_chars is checked only once it is parsed).
    limit = settings.max_body_bytes
    app.add_middleware(BodyGuard, timeout_s=settings.body_timeout_s, refuse=refuse_body, max_bytes=lambda _: limit)
    return app
