"""LoRAX's response shapes (``/generate``, ``/generate_stream``, ``/``, errors), defined once for every service
that speaks LoRAX's API: our engine answers with them and the gateway relays them. Pydantic models only."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Details",
    "ErrorResponse",
    "FinishReason",
    "GenerateResponse",
    "PrefillToken",
    "StreamDetails",
    "StreamResponse",
    "Token",
]

FinishReason = Literal["length", "eos_token", "stop_sequence"]


class PrefillToken(BaseModel):
    id: int
    text: str
    logprob: float | None = Field(None, description="null for the first prompt token")


class Token(BaseModel):
    id: int
    text: str
    logprob: float
    special: bool


class Details(BaseModel):
    finish_reason: FinishReason
    prompt_tokens: int
    generated_tokens: int
    seed: int | None
    prefill: list[PrefillToken]
    tokens: list[Token]


class GenerateResponse(BaseModel):
    generated_text: str
    details: Details | None = None

    model_config = ConfigDict(json_schema_extra={"examples": [{"generated_text": " purple"}]})


class StreamDetails(BaseModel):
    finish_reason: FinishReason
    prompt_tokens: int
    generated_tokens: int
    seed: int | None


class StreamResponse(BaseModel):
    """One Server-Sent Event per token; the last one also carries generated_text (and details if asked)."""

    token: Token
    generated_text: str | None = None
    details: StreamDetails | None = None


class ErrorResponse(BaseModel):
    error: str
    error_type: str

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"error": "`top_k` must be strictly positive", "error_type": "validation"}]}
    )
