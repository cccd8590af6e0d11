"""LoRAX's shapes (``/generate``, ``/generate_stream``, ``/``, errors), defined once for every service that
speaks LoRAX's API: the request and its parameters, which the engine and the gateway both take (each subclasses
them for what it does differently, see :mod:`soppu.protocol.notes`), and the responses, which the engine
answers with and the gateway relays. Pydantic models only.

Every parameter may be present and null, because ``lorax-client`` sends them all (nulls included, ``stop: []``,
``details: true``); defaults are LoRAX's. Unknown keys are dropped. Ranges are checked here; what depends on a
service's settings or on what a backend supports is each service's to check."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Details",
    "ErrorResponse",
    "FinishReason",
    "GenerateParameters",
    "GenerateRequest",
    "GenerateResponse",
    "PrefillToken",
    "StreamDetails",
    "StreamResponse",
    "Token",
]

FinishReason = Literal["length", "eos_token", "stop_sequence"]


class GenerateParameters(BaseModel):
    """LoRAX's 24 generation parameters."""

    model_config = ConfigDict(extra="ignore")

    adapter_id: str | None = None
    adapter_source: str | None = None
    merged_adapters: dict[str, Any] | None = None
    api_token: str | None = None
    best_of: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    top_k: int | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    typical_p: float | None = None
    do_sample: bool | None = False
    max_new_tokens: int | None = None
    ignore_eos_token: bool | None = False
    return_full_text: bool | None = False
    stop: list[str] | None = Field(None, max_length=4)
    truncate: int | None = None
    watermark: bool | None = False
    details: bool | None = False
    decoder_input_details: bool | None = False
    return_k_alternatives: int | None = None
    seed: int | None = Field(None, ge=0)
    response_format: dict[str, Any] | None = None


class GenerateRequest(BaseModel):
    """The body of ``/generate``, ``/generate_stream`` and ``/``."""

    model_config = ConfigDict(extra="ignore")

    inputs: str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    stream: bool = Field(False, description="only read by POST /: true answers with Server-Sent Events")


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
