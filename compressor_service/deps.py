"""Typed dependencies the routes declare. Everything lives on ``app.state`` (never module globals: tests build
several apps): the settings and metrics from ``create_app``, the :class:`Runtime` from the lifespan."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from soppu.auth import KeyRing, Principal
from soppu.registry.pipeline import Pipeline
from soppu.store import ObjectStore

from .access import presented_key
from .errors import ApiError
from .jobs import JobRunner
from .metrics import CompressorMetrics
from .notify import GatewayNotifier
from .settings import CompressorSettings
from .uploads import UploadSlots

__all__ = [
    "KeysDep",
    "MetricsDep",
    "NotifierDep",
    "PipelineDep",
    "PrincipalDep",
    "RunnerDep",
    "Runtime",
    "SettingsDep",
    "StoreDep",
    "UploadsDep",
]


@dataclass
class Runtime:
    """What the lifespan builds: the store and everything over it."""

    store: ObjectStore
    keys: KeyRing
    pipeline: Pipeline
    runner: JobRunner
    notifier: GatewayNotifier
    uploads: UploadSlots


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:  # before startup has finished or after shutdown has begun
        raise ApiError("busy", "the compressor is starting or stopping")
    return runtime


def get_settings_dep(request: Request) -> CompressorSettings:
    settings: CompressorSettings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> CompressorMetrics:
    metrics: CompressorMetrics = request.app.state.metrics
    return metrics


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_store(runtime: RuntimeDep) -> ObjectStore:
    return runtime.store


def get_keys(runtime: RuntimeDep) -> KeyRing:
    return runtime.keys


def get_pipeline(runtime: RuntimeDep) -> Pipeline:
    return runtime.pipeline


def get_runner(runtime: RuntimeDep) -> JobRunner:
    return runtime.runner


def get_uploads(runtime: RuntimeDep) -> UploadSlots:
    return runtime.uploads


def get_notifier(runtime: RuntimeDep) -> GatewayNotifier:
    return runtime.notifier


async def get_principal(request: Request, runtime: RuntimeDep) -> Principal:
    """The caller, from ``Authorization: Bearer`` or ``X-API-Key``; 401 when there is none or it is not valid."""
    key = presented_key(request)
    if key is None:
        raise ApiError("unauthorized", "send an API key as `Authorization: Bearer <key>` or `X-API-Key`")
    # A store lookup (unless it is the admin key): in a thread, and a store failure answers 503.
    principal = await asyncio.to_thread(runtime.keys.authenticate, key)
    if principal is None:
        raise ApiError("unauthorized", "unknown, malformed or revoked API key")
    return principal


StoreDep = Annotated[ObjectStore, Depends(get_store)]
KeysDep = Annotated[KeyRing, Depends(get_keys)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]
NotifierDep = Annotated[GatewayNotifier, Depends(get_notifier)]
UploadsDep = Annotated[UploadSlots, Depends(get_uploads)]
SettingsDep = Annotated[CompressorSettings, Depends(get_settings_dep)]
MetricsDep = Annotated[CompressorMetrics, Depends(get_metrics)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
