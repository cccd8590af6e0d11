"""Typed dependencies the routes declare: the running engine, the settings and the metrics, all kept on
``app.state`` by :func:`inference_service.app.create_app` (never module globals: tests build several apps)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from .engine import Engine
from .metrics import ServiceMetrics
from .settings import EngineSettings

__all__ = ["EngineDep", "MetricsDep", "SettingsDep", "get_engine", "get_metrics", "get_settings_dep"]


def get_engine(request: Request) -> Engine:
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None:  # before startup has finished or after shutdown has begun
        raise HTTPException(503, "the engine is not running")
    return engine


def get_settings_dep(request: Request) -> EngineSettings:
    settings: EngineSettings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[EngineSettings, Depends(get_settings_dep)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
