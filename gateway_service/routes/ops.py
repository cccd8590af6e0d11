"""Operational routes: ``GET /healthz`` (the process is up), ``GET /readyz`` (at least one healthy backend and
a reachable store; it also says whether per-user limits are shared through Redis, but a Redis outage leaves it
200: limits fall back to the replica's own, and pulling every replica out of service would be worse), ``GET
/metrics`` (Prometheus), and the admin's ``POST /v1/admin/invalidate``, which the compressor calls on deletions
and revocations so no cache serves a deleted user or a revoked key (with Redis, replicas also hear it by pub/sub:
:mod:`~gateway_service.invalidation`)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from ..deps import AdminDep, GatewayDep
from ..metrics import CONTENT_TYPE
from ..schemas import InvalidateRequest, InvalidateResponse, Readiness
from ._common import AUTH_ERRORS

__all__ = ["router"]

router = APIRouter(tags=["Operations"])


@router.get("/healthz", summary="200 while the process serves")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="200 when a backend is healthy and the store reachable, else 503")
async def readyz(gateway: GatewayDep) -> JSONResponse:
    healthy = len(gateway.pool.healthy())
    store = await gateway.store_ready()
    ready = healthy > 0 and store
    limiter = gateway.limiter
    body = Readiness(
        ready=ready,
        healthy_backends=healthy,
        backends=len(gateway.pool.backends),
        store=store,
        limits="shared" if limiter.shared else "local",
        redis=limiter.redis_up,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics (no per-user labels)")
async def metrics(gateway: GatewayDep) -> Response:
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)


@router.post(
    "/v1/admin/invalidate",
    summary="Drop cached resolutions and keys of a user, a key, or everything (admin key)",
    responses=AUTH_ERRORS,
)
async def invalidate(body: InvalidateRequest, gateway: GatewayDep, _: AdminDep) -> InvalidateResponse:
    resolutions, keys = gateway.invalidate(body.user_id, body.key_id, source="http")
    return InvalidateResponse(resolutions=resolutions, keys=keys)
