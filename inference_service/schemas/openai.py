"""OpenAI-style shapes for ``/v1/completions`` and ``/v1/chat/completions``, as LoRAX serves them: the shared ones
of :mod:`soppu.protocol.openai`, with this engine's notes on each request key.

``model`` names the adapter (see :func:`inference_service.params.adapter_for_model`).
"""

from __future__ import annotations

from pydantic import ConfigDict

from soppu.protocol import openai
from soppu.protocol.notes import schema_notes
from soppu.protocol.openai import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessage,
    CompletionChoice,
    CompletionResponse,
    CompletionStreamResponse,
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

_SAMPLING_NOTES = {  # the keys both routes share
    "model": "adapter: s3://bucket/prefix, an absolute directory, or the served model_id / 'default' for the base",
    "n": "only 1 is supported",
    "presence_penalty": "only 0 is supported",
    "frequency_penalty": "only 0 is supported",
    "logit_bias": "not supported: must be empty",
    "response_format": "not supported: must be null",
    "adapter_source": "overrides the source guessed from model",
    "api_token": "accepted and ignored",
}


class CompletionRequest(openai.CompletionRequest):
    model_config = ConfigDict(
        json_schema_extra=schema_notes(
            {
                **_SAMPLING_NOTES,
                "prompt": "one prompt (a list must hold exactly one)",
                "echo": "prepend the prompt to the returned text",
                "logprobs": "accepted; logprobs are not returned",
                "best_of": "only 1 is supported",
                "suffix": "not supported: must be null",
            },
            examples=[{"model": "s3://adapters/users/user-000/v00000001", "prompt": "My pet is a", "max_tokens": 8}],
        )
    )


class ChatCompletionRequest(openai.ChatCompletionRequest):
    model_config = ConfigDict(
        json_schema_extra=schema_notes(
            {
                **_SAMPLING_NOTES,
                "max_completion_tokens": "the newer name of max_tokens",
                "tools": "not supported: must be empty",
            },
            examples=[
                {
                    "model": "default",
                    "messages": [{"role": "user", "content": "My pet is a"}],
                    "max_tokens": 8,
                    "temperature": 0,
                }
            ],
        )
    )
