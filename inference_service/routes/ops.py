"""Operational routes: ``GET /health``, ``POST /tokenize``, ``GET /info``, ``GET /metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ..deps import EngineDep, MetricsDep
from ..engine import AdapterSourceKind, Engine
from ..metrics import CONTENT_TYPE
from ..schemas import ErrorResponse, Info, TokenizeRequest, TokenSpan

__all__ = ["router"]

router = APIRouter(tags=["Operations"])


@router.get(
    "/health",
    summary="200 with an empty body while the engine is running, else 503",
    responses={503: {"model": ErrorResponse}},
)
async def health(request: Request) -> Response:
    engine = request.app.state.engine
    if engine is None or not engine.healthy:  # LoRAX's body for an unhealthy server
        return JSONResponse({"error": "unhealthy", "error_type": "healthcheck"}, status_code=503)
    return Response(status_code=200)


@router.post("/tokenize", summary="The prompt's tokens with the character span each covers")
async def tokenize(body: TokenizeRequest, engine: EngineDep) -> list[TokenSpan]:
    encoded = await engine.tokenize(
        body.inputs, add_special_tokens=body.add_special_tokens, return_offsets_mapping=True
    )
    return [
        TokenSpan(id=int(token_id), text=body.inputs[start:stop], start=start, stop=stop)
        for token_id, (start, stop) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)
    ]


def _served(engine: Engine) -> dict[AdapterSourceKind, bool]:
    """Which sources this engine was given anything to read from (the rest refuse every adapter)."""
    rules = engine.config.sources
    return {AdapterSourceKind.S3: bool(rules.s3_buckets), AdapterSourceKind.LOCAL: bool(rules.local_roots)}


@router.get("/info", summary="The served model and the engine's limits")
async def info(request: Request, engine: EngineDep) -> Info:
    about = engine.info
    return Info(
        model_id=about.model_id,
        model_dtype=about.model_dtype,
        model_device_type=about.device_type,
        max_concurrent_requests=about.max_queue,
        max_input_length=about.max_input_length,
        max_total_tokens=about.max_total_tokens,
        max_batch_size=about.max_batch_size,
        adapter_sources=[kind.value for kind, on in _served(engine).items() if on],
        version=request.app.version,
    )


@router.get("/metrics", summary="Prometheus metrics (LoRAX's names where they apply)")
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE)
