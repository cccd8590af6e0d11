"""OpenAI-style response shapes (completions, chat completions) as LoRAX serves them, defined once for the
engine that answers with them and the gateway that relays them. Pydantic models only."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

__all__ = [
    "ChatChoice",
    "ChatCompletionResponse",
    "ChatMessage",
    "CompletionChoice",
    "CompletionResponse",
    "OpenAIFinishReason",
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
