"""OpenAI-style shapes (completions, chat completions) as LoRAX serves them, defined once: the requests, which
the engine and the gateway both take (each subclasses them for what it does differently, see
:mod:`soppu.protocol.notes`), and the responses and stream chunks, which the engine answers with and the gateway
relays. LoRAX's extra request keys (``adapter_source``, ``top_k``, ``repetition_penalty``, ``ignore_eos_token``,
``api_token``) are accepted too; unknown keys are dropped. Pydantic models only."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
    "SamplingFields",
    "TextPart",
    "Usage",
]

OpenAIFinishReason = Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: OpenAIFinishReason | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class TextPart(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(BaseModel):
    role: str
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessage
    logprobs: None = None
    finish_reason: OpenAIFinishReason


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionStreamResponse(BaseModel):
    """One event per token, then one with an empty text, the finish reason and the usage."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


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


class SamplingFields(BaseModel):
    """The request keys both OpenAI routes share."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = None
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stream: bool = False
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    seed: int | None = Field(None, ge=0)
    response_format: dict[str, Any] | None = None
    # LoRAX's additions
    adapter_source: str | None = None
    api_token: str | None = None
    top_k: int | None = Field(None, gt=0)
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos_token: bool | None = False


class CompletionRequest(SamplingFields):
    """The body of ``/v1/completions``."""

    prompt: str | list[str]
    echo: bool | None = False
    logprobs: int | None = None
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None


class ChatCompletionRequest(SamplingFields):
    """The body of ``/v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
