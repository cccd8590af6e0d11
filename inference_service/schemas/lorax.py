"""LoRAX's request shapes for ``/generate``, ``/generate_stream`` and ``/`` (the responses are the shared ones of
:mod:`soppu.protocol.lorax`).

Every LoRAX parameter key is accepted and may be null, because ``lorax-client`` sends them all (nulls
included, ``stop: []``, ``details: true``). Ranges are checked here; what depends on the settings or on what
the engine supports is checked in :mod:`inference_service.params`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from soppu.protocol.lorax import (
    Details,
    ErrorResponse,
    GenerateResponse,
    PrefillToken,
    StreamDetails,
    StreamResponse,
    Token,
)

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
