"""LoRAX's generation routes: ``POST /generate``, ``POST /generate_stream`` and ``POST /`` (the compat route
``lorax-client`` calls: a JSON list when not streaming, SSE when ``stream`` is true)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from fastapi import APIRouter, Response

from ..deps import EngineDep, MetricsDep, SettingsDep
from ..engine import EngineError, GenerationResult, TokenInfo
from ..generation import Generation, begin
from ..schemas import Details, GenerateRequest, GenerateResponse, StreamDetails, StreamResponse
from ..sse import EventStreamResponse, event
from ._common import ERROR_RESPONSES, SSE_RESPONSE, error_event, prefill_token, token

__all__ = ["router"]

router = APIRouter(tags=["LoRAX"], responses=ERROR_RESPONSES)


def _headers(gen: Generation, result: GenerationResult, model_id: str) -> dict[str, str]:
    """LoRAX's response headers; the base model is reported as the served model_id with source ``base``."""
    return {
        "x-prompt-tokens": str(result.prompt_tokens),
        "x-generated-tokens": str(result.generated_tokens),
        "x-total-tokens": str(result.prompt_tokens + result.generated_tokens),
        "x-adapter-id": gen.adapter.adapter_id if gen.adapter else model_id,
        "x-adapter-source": gen.adapter.source.value if gen.adapter else "base",
    }


def _text(body: GenerateRequest, generated: str) -> str:
    return body.inputs + generated if body.parameters.return_full_text else generated


async def _generate(
    body: GenerateRequest, engine: EngineDep, settings: SettingsDep, metrics: MetricsDep, response: Response
) -> GenerateResponse:
    gen = await begin(engine, settings, metrics, body.inputs, body.parameters)
    tokens, result = await gen.collect()
    response.headers.update(_headers(gen, result, engine.info.model_id))
    details = None
    if body.parameters.details:
        details = Details(
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            generated_tokens=result.generated_tokens,
            seed=result.seed,
            prefill=[prefill_token(t) for t in result.prefill],
            tokens=[token(t) for t in tokens],
        )
    return GenerateResponse(generated_text=_text(body, result.generated_text), details=details)


async def _events(body: GenerateRequest, gen: Generation) -> AsyncGenerator[str, None]:
    """One event per token, sent as soon as it is chosen. Only the final token (the engine marks it) waits for
    the GenerationResult, which follows it at once, since LoRAX's last event carries the text and details."""
    held: TokenInfo | None = None
    async with aclosing(gen.items()) as items:
        try:
            async for item in items:
                if isinstance(item, TokenInfo):
                    if held is not None:
                        yield event(StreamResponse(token=token(held)))
                        held = None
                    if item.final:
                        held = item
                    else:
                        yield event(StreamResponse(token=token(item)))
                elif held is not None:
                    details = None
                    if body.parameters.details:
                        details = StreamDetails(
                            finish_reason=item.finish_reason,
                            prompt_tokens=item.prompt_tokens,
                            generated_tokens=item.generated_tokens,
                            seed=item.seed,
                        )
                    final = StreamResponse(
                        token=token(held), generated_text=_text(body, item.generated_text), details=details
                    )
                    held = None
                    yield event(final)
        except EngineError as e:
            if held is not None:
                yield event(StreamResponse(token=token(held)))
            yield event(error_event(e))


async def _stream(
    body: GenerateRequest, engine: EngineDep, settings: SettingsDep, metrics: MetricsDep
) -> EventStreamResponse:
    gen = await begin(engine, settings, metrics, body.inputs, body.parameters)
    return EventStreamResponse(_events(body, gen), on_close=gen.aclose)


@router.post("/generate", summary="Generate text (JSON)")
async def generate(
    body: GenerateRequest, engine: EngineDep, settings: SettingsDep, metrics: MetricsDep, response: Response
) -> GenerateResponse:
    return await _generate(body, engine, settings, metrics, response)


@router.post("/generate_stream", summary="Generate text as Server-Sent Events", responses=SSE_RESPONSE)
async def generate_stream(
    body: GenerateRequest, engine: EngineDep, settings: SettingsDep, metrics: MetricsDep
) -> EventStreamResponse:
    return await _stream(body, engine, settings, metrics)


@router.post(
    "/",
    summary="Generate (lorax-client's route): a one-element list, or SSE when stream is true",
    response_model=list[GenerateResponse],
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def compat_generate(
    body: GenerateRequest, engine: EngineDep, settings: SettingsDep, metrics: MetricsDep, response: Response
) -> list[GenerateResponse] | Response:
    if body.stream:
        return await _stream(body, engine, settings, metrics)
    return [await _generate(body, engine, settings, metrics, response)]
