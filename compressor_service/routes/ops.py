"""Operational routes: ``GET /healthz`` (alive), ``GET /readyz`` (store usable, device present, pending jobs
resumed), ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

import asyncio

import torch
from fastapi import APIRouter, Response

from soppu.errors import StoreError

from ..deps import MetricsDep, RunnerDep, SettingsDep, StoreDep
from ..errors import ApiError
from ..metrics import CONTENT_TYPE
from ..schemas import Health, Readiness
from ._common import errors

__all__ = ["router"]

router = APIRouter(tags=["Operations"])


@router.get("/healthz", summary="200 while the process is alive")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz", summary="200 when the store answers, the device is there and pending jobs are queued", responses=errors()
)
async def readyz(store: StoreDep, runner: RunnerDep, settings: SettingsDep) -> Readiness:
    try:
        await asyncio.to_thread(store.check)
    except StoreError as e:
        raise ApiError("not_ready", f"the store is not usable ({e.code})") from e
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ApiError("not_ready", "device cuda is configured but no CUDA device is available")
    if not runner.resumed:
        raise ApiError("not_ready", "still queueing the jobs an earlier process left")
    device = "cuda" if settings.device != "cpu" and torch.cuda.is_available() else "cpu"
    return Readiness(
        status="ready",
        store="ok",
        device=device,
        workers=runner.workers,
        queue_depth=runner.depth,
        jobs_running=runner.running,
    )


@router.get("/metrics", summary="Prometheus metrics")
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE)
