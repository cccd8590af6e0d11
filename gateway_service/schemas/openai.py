"""OpenAI-style shapes as the gateway takes them. ``model`` is the caller's adapter NAME (``default`` for the
default adapter), never a storage id. With a service key the user is named by ``user_id`` (or OpenAI's own
``user`` field); with a user key ``user`` is OpenAI's free-form end-user tag and is not forwarded.
LoRAX's extra keys ``adapter_source`` and ``api_token`` are ignored and never forwarded."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from soppu.protocol.openai import (
    ChatCompletionResponse,
    ChatMessage,
    CompletionResponse,
    Usage,
)

__all__ = [
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatMessage",
    "CompletionRequest",
    "CompletionResponse",
    "ModelCard",
    "ModelList",
    "Usage",
]


class _SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field("default", description="the adapter name; `default` is the user's default adapter")
    user_id: str | None = Field(None, description="whose adapter, with a service key (SOPPU's extension)")
    user: str | None = Field(None, description="with a service key: the user id when user_id is absent")
    max_tokens: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stream: bool = False
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    seed: int | None = Field(None, ge=0)
    response_format: dict[str, Any] | None = None
    adapter_source: str | None = Field(None, description="ignored")
    api_token: str | None = Field(None, description="ignored and never forwarded")
    top_k: int | None = Field(None, gt=0)
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos_token: bool | None = None


class CompletionRequest(_SamplingFields):
    model_config = ConfigDict(
        extra="ignore", json_schema_extra={"examples": [{"model": "default", "prompt": "My pet is a", "max_tokens": 8}]}
    )

    prompt: str | list[str]
    echo: bool | None = None
    logprobs: int | None = None
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None


class ChatCompletionRequest(_SamplingFields):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"model": "default", "messages": [{"role": "user", "content": "My pet is a"}], "max_tokens": 8}
            ]
        },
    )

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, gt=0)
    tools: list[dict[str, Any]] | None = None


class ModelCard(BaseModel):
    id: str = Field(description="an adapter name, usable as `model`")
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
