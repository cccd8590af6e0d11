"""LoRAX's request and response shapes for ``/generate``, ``/generate_stream`` and ``/``.

Every LoRAX parameter key is accepted and may be null, because ``lorax-client`` sends them all (nulls
included, ``stop: []``, ``details: true``). Ranges are checked here; what depends on the settings or on what
the engine supports is checked in :mod:`inference_service.params`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Details",
    "ErrorResponse",
    "GenerateParameters",
    "GenerateRequest",
    "GenerateResponse",
    "PrefillToken",
    "StreamDetails",
    "StreamResponse",
    "Token",
]

FinishReason = Literal["length", "eos_token", "stop_sequence"]

_ADAPTER_EXAMPLE = {"adapter_id": "s3://adapters/users/user-000/v00000001", "adapter_source": "s3"}


class GenerateParameters(BaseModel):
    adapter_id: str | None = Field(None, description="s3://bucket/prefix or an absolute directory; null: base model")
    adapter_source: str | None = Field(None, description='"s3" (the default when adapter_id is set) or "local"')
    merged_adapters: dict[str, Any] | None = Field(None, description="not supported: must be null")
    api_token: str | None = Field(None, description="accepted and ignored (never logged)")
    best_of: int | None = Field(None, gt=0, description="only 1 is supported")
    temperature: float | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    frequency_penalty: float | None = Field(None, description="only 0 is supported")
    presence_penalty: float | None = Field(None, description="only 0 is supported")
    top_k: int | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    typical_p: float | None = Field(None, description="not supported: must be null")
    do_sample: bool | None = False
    max_new_tokens: int | None = Field(None, description="default: the server's default_max_new_tokens")
    ignore_eos_token: bool | None = False
    return_full_text: bool | None = False
    stop: list[str] | None = Field(None, max_length=4, description="stop sequences (at most 4, as in LoRAX)")
    truncate: int | None = Field(None, description="not supported: must be null")
    watermark: bool | None = Field(False, description="not supported: must be false")
    details: bool | None = Field(False, description="return finish reason, token counts and tokens")
    decoder_input_details: bool | None = Field(False, description="also return the prompt tokens in details")
    return_k_alternatives: int | None = Field(None, description="not supported: must be null")
    seed: int | None = Field(None, ge=0)
    response_format: dict[str, Any] | None = Field(None, description="not supported: must be null")

    model_config = ConfigDict(
        json_schema_extra={"examples": [{**_ADAPTER_EXAMPLE, "max_new_tokens": 8, "details": True}]}
    )


class GenerateRequest(BaseModel):
    inputs: str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    stream: bool = Field(False, description="only read by POST /: true answers with Server-Sent Events")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"inputs": "My favourite colour is", "parameters": {**_ADAPTER_EXAMPLE, "max_new_tokens": 8}}]
        }
    )


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
