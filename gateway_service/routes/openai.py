"""OpenAI-style routes through the gateway: completions and chat completions (``model`` = the adapter name,
``stream`` for SSE) and ``GET /v1/models``, which lists the caller's adapters only."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response

from ..deps import CallDep
from ..forward import openai
from ..schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)
from ._common import AUTH_ERRORS, GENERATION_ERRORS, SSE_RESPONSE

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["OpenAI"])


@router.post(
    "/completions",
    summary="Text completion with the user's adapter",
    response_model=CompletionResponse,
    responses={**GENERATION_ERRORS, **SSE_RESPONSE},
)
async def completions(body: CompletionRequest, call: CallDep) -> Response:
    return await openai(call, body, "/v1/completions")


@router.post(
    "/chat/completions",
    summary="Chat completion with the user's adapter",
    response_model=ChatCompletionResponse,
    responses={**GENERATION_ERRORS, **SSE_RESPONSE},
)
async def chat_completions(body: ChatCompletionRequest, call: CallDep) -> Response:
    return await openai(call, body, "/v1/chat/completions")


@router.get("/models", summary="The caller's adapters (usable as `model`)", responses=AUTH_ERRORS)
async def models(
    call: CallDep, user_id: str | None = Query(None, description="whose adapters, with a service or admin key")
) -> ModelList:
    user = call.gateway.acting_user(call.principal, user_id)
    names = await call.gateway.adapter_names(user)
    return ModelList(data=[ModelCard(id=name, owned_by=user) for name in names])
