"""OpenAI-style routes, as LoRAX serves them: ``POST /v1/completions`` and ``POST /v1/chat/completions``.
``model`` names the adapter (see :mod:`inference_service.params`); ``stream: true`` answers with SSE chunks
ending in ``data: [DONE]``."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

from fastapi import APIRouter, Response
from pydantic import BaseModel

from ..deps import EngineDep, MetricsDep, SettingsDep
from ..engine import EngineError, GenerationResult, TokenInfo
from ..generation import Generation, begin
from ..params import chat_parameters, completion_parameters, completion_prompt, render_chat
from ..schemas import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessage,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
    OpenAIFinishReason,
    Usage,
)
from ..sse import DONE, EventStreamResponse, event
from ._common import ERROR_RESPONSES, SSE_RESPONSE, error_event

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["OpenAI"], responses=ERROR_RESPONSES)

# A chunk for one token (text) or for the end (None: empty text, finish reason and usage).
ChunkMaker = Callable[[str | None, GenerationResult | None], BaseModel]


def _finish(result: GenerationResult) -> OpenAIFinishReason:
    return "length" if result.finish_reason == "length" else "stop"


def _usage(result: GenerationResult) -> Usage:
    total = result.prompt_tokens + result.generated_tokens
    return Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.generated_tokens, total_tokens=total)


def _id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


async def _chunks(gen: Generation, make: ChunkMaker, opening: BaseModel | None) -> AsyncGenerator[str, None]:
    """``opening`` if any, one chunk per token, a last one with the finish reason and usage, then ``[DONE]``;
    an error mid-way ends the stream with LoRAX's error event instead."""
    if opening is not None:
        yield event(opening)
    async with aclosing(gen.items()) as items:
        try:
            async for item in items:
                if isinstance(item, TokenInfo):
                    yield event(make(item.text, None))
                else:
                    yield event(make(None, item))
        except EngineError as e:
            yield event(error_event(e))
            return
    yield DONE


@router.post(
    "/completions", summary="Text completion (OpenAI style)", response_model=CompletionResponse, responses=SSE_RESPONSE
)
async def completions(
    body: CompletionRequest, engine: EngineDep, settings: SettingsDep, metrics: MetricsDep
) -> CompletionResponse | Response:
    model_id = engine.info.model_id
    prompt = completion_prompt(body)
    gen = await begin(engine, settings, metrics, prompt, completion_parameters(body, model_id))
    cid, created = _id("cmpl"), int(time.time())
    echo = prompt if body.echo else ""

    def chunk(text: str | None, result: GenerationResult | None) -> CompletionStreamResponse:
        if result is None:
            return CompletionStreamResponse(
                id=cid, created=created, model=body.model, choices=[CompletionChoice(text=text or "")]
            )
        choice = CompletionChoice(text="", finish_reason=_finish(result))
        return CompletionStreamResponse(
            id=cid, created=created, model=body.model, choices=[choice], usage=_usage(result)
        )

    if body.stream:
        opening = chunk(echo, None) if echo else None  # the echoed prompt comes first, as one chunk
        return EventStreamResponse(_chunks(gen, chunk, opening), on_close=gen.aclose)
    _, result = await gen.collect()
    choice = CompletionChoice(text=echo + result.generated_text, finish_reason=_finish(result))
    return CompletionResponse(id=cid, created=created, model=body.model, choices=[choice], usage=_usage(result))


@router.post(
    "/chat/completions",
    summary="Chat completion (OpenAI style)",
    response_model=ChatCompletionResponse,
    responses=SSE_RESPONSE,
)
async def chat_completions(
    body: ChatCompletionRequest, engine: EngineDep, settings: SettingsDep, metrics: MetricsDep
) -> ChatCompletionResponse | Response:
    model_id = engine.info.model_id
    prompt = render_chat(engine.tokenizer, body.messages, engine.config.max_input_chars)
    gen = await begin(engine, settings, metrics, prompt, chat_parameters(body, model_id))
    cid, created = _id("chatcmpl"), int(time.time())

    def chunk(text: str | None, result: GenerationResult | None) -> ChatCompletionChunk:
        if result is None:
            choice = ChatChunkChoice(delta=ChatDelta(content=text))
            return ChatCompletionChunk(id=cid, created=created, model=body.model, choices=[choice])
        choice = ChatChunkChoice(delta=ChatDelta(), finish_reason=_finish(result))
        return ChatCompletionChunk(id=cid, created=created, model=body.model, choices=[choice], usage=_usage(result))

    if body.stream:
        # OpenAI opens a chat stream with an empty delta naming the role
        opening = ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))
        first = ChatCompletionChunk(id=cid, created=created, model=body.model, choices=[opening])
        return EventStreamResponse(_chunks(gen, chunk, first), on_close=gen.aclose)
    _, result = await gen.collect()
    message = ChatMessage(role="assistant", content=result.generated_text)
    choice = ChatChoice(message=message, finish_reason=_finish(result))
    return ChatCompletionResponse(id=cid, created=created, model=body.model, choices=[choice], usage=_usage(result))
