"""Request and response shapes of every route: LoRAX's (``lorax``), OpenAI's (``openai``) and the
operational ones (``ops``). Shapes only; mapping them onto engine parameters is :mod:`inference_service.params`."""

from .lorax import (
    Details,
    ErrorResponse,
    GenerateParameters,
    GenerateRequest,
    GenerateResponse,
    PrefillToken,
    StreamDetails,
    StreamResponse,
    Token,
)
from .openai import (
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
from .ops import Info, TokenizeRequest, TokenSpan

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
    "Details",
    "ErrorResponse",
    "GenerateParameters",
    "GenerateRequest",
    "GenerateResponse",
    "Info",
    "OpenAIFinishReason",
    "PrefillToken",
    "StreamDetails",
    "StreamResponse",
    "Token",
    "TokenSpan",
    "TokenizeRequest",
    "Usage",
]
