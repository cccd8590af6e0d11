"""``create_app()``: the gateway's FastAPI app. Nothing is built at import time; the lifespan opens the store,
the upstream connection pool (one ``httpx.AsyncClient``) and the health checker, and closes them on shutdown.

Every error answers with LoRAX's body ``{"error": str, "error_type": str}`` (see :mod:`gateway_service.errors`
for the codes); FastAPI's own request validation answers 422 ``validation`` like the backends do. The request
body's size cap and deadline (413, 408) are enforced in front of every route by
:class:`soppu.protocol.request_body.BodyGuard`; inside it, the generation routes are served by their fast lane
(:mod:`gateway_service.lane`), the rest by FastAPI's router.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from soppu.protocol.request_body import BodyGuard
from soppu.store.factory import open_store
from soppu_web.lorax_errors import install_lorax_handlers, lorax_error_response

from .edge import EdgeMiddleware
from .errors import GatewayError, RequestTimeout, RequestTooLarge
from .lane import FastLane, error_response, lanes
from .metrics import GatewayMetrics
from .routes import lorax, openai, ops
from .service import Gateway
from .settings import GatewaySettings, get_settings
from .transport import StreamTransport

__all__ = ["create_app"]

_log = logging.getLogger(__name__)
_BODY_REFUSALS: dict[int, type[GatewayError]] = {408: RequestTimeout, 413: RequestTooLarge}


def _refuse_body(status: int, message: str) -> bytes:
    return json.dumps(_BODY_REFUSALS[status](message).body()).encode()


async def _on_gateway_error(_: Request, e: Exception) -> Response:
    assert isinstance(e, GatewayError)
    return error_response(e)


async def _on_unexpected(request: Request, e: Exception) -> JSONResponse:
    # The gateway faces the internet: the details go to the log (with the request id), not to the client.
    _log.error("request %s failed", getattr(request.state, "request_id", "-"), exc_info=e)
    return lorax_error_response(500, "internal error", "internal")


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """The app for ``settings`` (default: the environment's)."""
    settings = settings or get_settings()
    metrics = GatewayMetrics()  # made here, not in the lifespan: the middleware counts requests from the start

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = await asyncio.to_thread(open_store, settings.store_url)
        # One connection pool for everything upstream (no limit of its own: the concurrency gate bounds the
        # requests in flight); the client, for health checks, sits on it too.
        transport = StreamTransport(max_idle_s=settings.upstream_idle_s)
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            gateway = Gateway(settings, store, transport, metrics)
            await gateway.start()  # Redis: the shared limits' recovery probe, the invalidation subscriber
            # One round before serving, so /readyz and routing start from the backends' real state.
            timeouts = (settings.health_timeout_s, settings.health_fallback_timeout_s)
            await gateway.pool.check_all(client, *timeouts)
            watcher = asyncio.create_task(gateway.pool.watch(client, settings.health_interval_s, *timeouts))
            app.state.gateway = gateway
            try:
                yield
            finally:
                app.state.gateway = None
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                await gateway.aclose()

    app = FastAPI(
        title="SOPPU gateway",
        summary="Authenticates users and services, resolves each user's adapter, routes to LoRAX-compatible backends",
        version=version("soppu"),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.gateway = None
    install_lorax_handlers(app)
    app.add_exception_handler(GatewayError, _on_gateway_error)
    app.add_exception_handler(Exception, _on_unexpected)
    for module in (lorax, openai, ops):
        app.include_router(module.router)
    routes = frozenset(getattr(route, "path", "") for m in (lorax, openai, ops) for route in m.router.routes)
    limit = settings.max_body_bytes
    # Innermost: the generation routes' fast lane, in front of FastAPI's router (see gateway_service.lane).
    app.add_middleware(
        FastLane, lanes=lanes([*lorax.router.routes, *openai.router.routes]), gateway=lambda: app.state.gateway
    )
    app.add_middleware(BodyGuard, timeout_s=settings.body_timeout_s, refuse=_refuse_body, max_bytes=lambda _: limit)
    app.add_middleware(EdgeMiddleware, metrics=metrics, routes=routes)  # added last: the outermost
    return app
