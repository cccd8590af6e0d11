"""LoRAX's generation routes through the gateway: ``POST /generate``, ``POST /generate_stream`` and ``POST /``
(the route ``lorax-client`` calls: a one-element list, or SSE when ``stream`` is true)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..deps import CallDep
from ..forward import Mode, generate
from ..schemas import GenerateRequest, GenerateResponse
from ._common import GENERATION_ERRORS, SSE_RESPONSE

__all__ = ["router"]

router = APIRouter(tags=["LoRAX"], responses=GENERATION_ERRORS)


@router.post("/generate", summary="Generate with the user's adapter (JSON)", response_model=GenerateResponse)
async def generate_json(body: GenerateRequest, call: CallDep) -> Response:
    return await generate(call, body, Mode.JSON)


@router.post("/generate_stream", summary="Generate as Server-Sent Events", responses=SSE_RESPONSE)
async def generate_stream(body: GenerateRequest, call: CallDep) -> Response:
    return await generate(call, body, Mode.STREAM)


@router.post(
    "/",
    summary="Generate (lorax-client's route): a one-element list, or SSE when stream is true",
    response_model=list[GenerateResponse],
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def compat_generate(body: GenerateRequest, call: CallDep) -> Response:
    return await generate(call, body, Mode.STREAM if body.stream else Mode.LIST)
