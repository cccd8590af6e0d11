"""OpenAI-style shapes as the gateway takes them: the shared ones of :mod:`soppu.protocol.openai`, plus
``user_id``. ``model`` is the caller's adapter NAME (``default`` for the default adapter), never a storage id.
With a service key the user is named by ``user_id`` (or OpenAI's own ``user`` field); with a user key ``user`` is
OpenAI's free-form end-user tag and is not forwarded. LoRAX's extra keys ``adapter_source`` and ``api_token``
are ignored and never forwarded."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from soppu.protocol import openai
from soppu.protocol.notes import schema_notes
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

_SAMPLING_NOTES = {
    "model": "the adapter name; `default` is the user's default adapter",
    "user": "with a service key: the user id when user_id is absent",
    "adapter_source": "ignored",
    "api_token": "ignored and never forwarded",
}


class _GatewayFields(BaseModel):
    """What the gateway does differently on the keys both routes share (listed first in each request's bases)."""

    model: str = "default"  # optional here: a caller's default adapter needs no name
    user_id: str | None = Field(None, description="whose adapter, with a service key (SOPPU's extension)")
    # Checked here, not left to the backend: the gateway applies its default and cap before forwarding.
    max_tokens: int | None = Field(None, gt=0)
    # Null, not LoRAX's false: the gateway forwards only what the caller set (exclude_none).
    ignore_eos_token: bool | None = None


class CompletionRequest(_GatewayFields, openai.CompletionRequest):
    model_config = ConfigDict(
        json_schema_extra=schema_notes(
            _SAMPLING_NOTES, examples=[{"model": "default", "prompt": "My pet is a", "max_tokens": 8}]
        )
    )

    echo: bool | None = None  # forwarded only when set, as above


class ChatCompletionRequest(_GatewayFields, openai.ChatCompletionRequest):
    model_config = ConfigDict(
        json_schema_extra=schema_notes(
            _SAMPLING_NOTES,
            examples=[{"model": "default", "messages": [{"role": "user", "content": "My pet is a"}], "max_tokens": 8}],
        )
    )

    max_completion_tokens: int | None = Field(None, gt=0)  # capped like max_tokens


class ModelCard(BaseModel):
    id: str = Field(description="an adapter name, usable as `model`")
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
