"""``create_app()``: the FastAPI app of the compressor. Nothing is built at import time; the lifespan opens the
store (creating an S3 bucket that is missing), builds the key ring, the gate (loading the base model for the
behaviour check when one is configured) and the pipeline, starts the job workers, and re-queues the jobs an
earlier process left queued or running. The store may be down at start: the service still comes up, answers
503 until the store is back, and resumes the jobs then.

In front of every route, :class:`soppu.protocol.request_body.BodyGuard` caps each body but an upload's at
``max_json_bytes`` (413 ``too_large``; the upload route caps its own at ``max_upload_bytes`` as it parses it)
and gives a body that does not arrive within ``body_timeout_s`` 408 ``request_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from importlib.metadata import version
from typing import Any

import torch
from fastapi import FastAPI

from soppu.auth import KeyRing
from soppu.protocol.request_body import BodyGuard
from soppu.registry.catalog import user_is_deleting
from soppu.registry.pipeline import Pipeline
from soppu.store import open_store

from .deps import Runtime
from .errors import install_handlers
from .gate import build_gate, build_policy
from .jobs import JobRunner
from .metrics import CompressorMetrics
from .notify import GatewayNotifier
from .routes import adapters, cohorts, jobs, keys, ops, users
from .settings import CompressorSettings, get_settings
from .uploads import UploadSlots

__all__ = ["create_app"]

log = logging.getLogger(__name__)
_BODY_CODES = {408: "request_timeout", 413: "too_large"}


def _refuse_body(status: int, message: str) -> bytes:
    return json.dumps({"error": {"code": _BODY_CODES[status], "message": message}}).encode()


def _body_caps(settings: CompressorSettings) -> Callable[[Any], int | None]:
    """Every body but an upload's is small JSON. An upload's cap is the upload route's own (uploads.receive_form
    counts the bytes as it parses them, answers 413 too_large and counts the rejection)."""
    upload = next(r for r in adapters.router.routes if getattr(r, "endpoint", None) is adapters.upload_adapter)
    pattern = upload.path_regex  # type: ignore[attr-defined]

    def cap(scope: Any) -> int | None:
        if scope["method"] == "POST" and pattern.match(scope["path"]):
            return None
        return settings.max_json_bytes

    return cap


async def _build(settings: CompressorSettings) -> Runtime:
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("SOPPU_COMPRESSOR_DEVICE=cuda but no CUDA device is available")
    if settings.torch_threads is not None:
        # On a shared box an OpenMP thread that is descheduled stalls every op it is part of: a 3 s job took 30.
        torch.set_num_threads(settings.torch_threads)
    store = open_store(settings.store_url)
    admin_key = settings.admin_key.get_secret_value() if settings.admin_key else None
    gate = await asyncio.to_thread(build_gate, settings)
    pipeline = Pipeline(store, build_policy(settings), gate, lease_ttl_s=settings.lease_ttl_s)
    runner = JobRunner(
        pipeline, settings.workers, settings.queue_size, retry_s=settings.job_retry_s, reclaim_s=settings.job_reclaim_s
    )
    notifier = GatewayNotifier(
        settings.gateway_urls, settings.admin_key, settings.notify_timeout_s, settings.redis_url.get_secret_value()
    )
    # A key issued for a user whose deletion is under way is withdrawn (see soppu.auth).
    ring = KeyRing(store, admin_key, deleting=partial(user_is_deleting, store))
    return Runtime(store, ring, pipeline, runner, notifier, UploadSlots(settings.max_concurrent_uploads))


def create_app(settings: CompressorSettings | None = None) -> FastAPI:
    """The app for ``settings`` (default: the environment's)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await _build(settings)
        runtime.runner.metrics = app.state.metrics
        await runtime.runner.start()
        app.state.runtime = runtime
        log.info("compressor ready on %s with %d worker(s)", runtime.store.url, settings.workers)
        try:
            yield
        finally:
            app.state.runtime = None
            await runtime.runner.stop()
            await runtime.notifier.aclose()

    app = FastAPI(
        title="SOPPU compressor",
        summary="Upload a LoRA adapter per user; it is validated, stored, compressed onto a shared basis, "
        "checked, and published as a new version",
        version=version("soppu"),  # not soppu.__version__: under pytest, tests/soppu can shadow the package
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.runtime = None

    def queue_depth() -> int:
        return app.state.runtime.runner.depth if app.state.runtime else 0

    def running() -> int:
        return app.state.runtime.runner.running if app.state.runtime else 0

    app.state.metrics = CompressorMetrics(queue_depth, running)
    install_handlers(app, settings.retry_after_s)
    for module in (adapters, jobs, users, keys, cohorts, ops):
        app.include_router(module.router)
    caps = _body_caps(settings)
    app.add_middleware(BodyGuard, timeout_s=settings.body_timeout_s, refuse=_refuse_body, max_bytes=caps)
    return app
