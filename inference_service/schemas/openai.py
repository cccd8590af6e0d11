"""OpenAI-style shapes for ``/v1/completions`` and ``/v1/chat/completions``, as LoRAX serves them.

``model`` names the adapter (see :func:`inference_service.params.adapter_for_model`). LoRAX's extra keys
(``adapter_source``, ``top_k``, ``repetition_penalty``, ``ignore_eos_token``, ``api_token``) are accepted too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from soppu.protocol.openai import (
    ChatChoice,
    ChatCompletionResponse,
    ChatMessage,
    CompletionChoice,
    CompletionResponse,
    OpenAIFinishReason,
    Usage,
)

__all__ = [
    "ChatChoice",
    "ChatChunkChoice",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatDelta",
    "ChatMessage",
    "CompletionChoice",
    "CompletionRequest",
    "CompletionResponse",
    "CompletionStreamResponse",
    "OpenAIFinishReason",
    "Usage",
]

_MODEL_DOC = "adapter: s3://bucket/prefix, an absolute directory, or the served model_id / 'default' for the base"


class _SamplingFields(BaseModel):
    """The keys both OpenAI routes share."""

    model: str = Field(description=_MODEL_DOC)
    max_tokens: int | None = None
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, description="only 1 is supported")
    stream: bool = False
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, description="only 0 is supported")
    frequency_penalty: float | None = Field(None, description="only 0 is supported")
    logit_bias: dict[str, float] | None = Field(None, description="not supported: must be empty")
    user: str | None = None
    seed: int | None = Field(None, ge=0)
    response_format: dict[str, Any] | None = Field(None, description="not supported: must be null")
    # LoRAX's additions
    adapter_source: str | None = Field(None, description="overrides the source guessed from model")
    api_token: str | None = Field(None, description="accepted and ignored")
    top_k: int | None = Field(None, gt=0)
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos_token: bool | None = False


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] = Field(description="one prompt (a list must hold exactly one)")
    echo: bool | None = Field(False, description="prepend the prompt to the returned text")
    logprobs: int | None = Field(None, description="accepted; logprobs are not returned")
    best_of: int | None = Field(None, ge=1, description="only 1 is supported")
    suffix: str | None = Field(None, description="not supported: must be null")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"model": "s3://adapters/users/user-000/v00000001", "prompt": "My pet is a", "max_tokens": 8}]
        }
    )


class CompletionStreamResponse(BaseModel):
    """One event per token, then one with an empty text, the finish reason and the usage."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, description="the newer name of max_tokens")
    tools: list[dict[str, Any]] | None = Field(None, description="not supported: must be empty")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "default",
                    "messages": [{"role": "user", "content": "My pet is a"}],
                    "max_tokens": 8,
                    "temperature": 0,
                }
            ]
        }
    )


class ChatDelta(BaseModel):
    role: str | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: None = None
    finish_reason: OpenAIFinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
