"""Request and response shapes of every route: LoRAX's (``lorax``), OpenAI's (``openai``) and the operational
and admin ones (``ops``). Shapes only; what the gateway does with them is in :mod:`gateway_service.forward`."""

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
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    Usage,
)
from .ops import InvalidateRequest, InvalidateResponse, Readiness

__all__ = [
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatMessage",
    "CompletionRequest",
    "CompletionResponse",
    "Details",
    "ErrorResponse",
    "GenerateParameters",
    "GenerateRequest",
    "GenerateResponse",
    "InvalidateRequest",
    "InvalidateResponse",
    "ModelCard",
    "ModelList",
    "PrefillToken",
    "Readiness",
    "StreamDetails",
    "StreamResponse",
    "Token",
    "Usage",
]
