"""LoRAX's request shapes as the gateway takes them (the engine's, plus ``user_id`` and ``adapter``); the
response shapes are the shared ones of :mod:`soppu.protocol.lorax`.

Every LoRAX parameter may be present and null, because ``lorax-client`` sends them all. Unknown keys are
dropped, so nothing the gateway does not know is forwarded. ``adapter_id`` is an adapter NAME here (never a
storage id: the gateway resolves it), and ``adapter_source`` / ``api_token`` are ignored and never forwarded.
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


class GenerateParameters(BaseModel):
    model_config = ConfigDict(
        extra="ignore", json_schema_extra={"examples": [{"adapter_id": "default", "max_new_tokens": 8}]}
    )

    adapter_id: str | None = Field(None, description="the adapter NAME (default: `default`); never a storage path")
    adapter_source: str | None = Field(None, description="ignored: the gateway decides where adapters come from")
    merged_adapters: dict[str, Any] | None = Field(None, description="not allowed through the gateway: must be null")
    api_token: str | None = Field(None, description="ignored and never forwarded")
    best_of: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    top_k: int | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    typical_p: float | None = None
    do_sample: bool | None = None
    max_new_tokens: int | None = Field(None, gt=0, description="default and cap: the gateway's settings")
    ignore_eos_token: bool | None = None
    return_full_text: bool | None = None
    stop: list[str] | None = Field(None, max_length=4)
    truncate: int | None = None
    watermark: bool | None = None
    details: bool | None = None
    decoder_input_details: bool | None = None
    return_k_alternatives: int | None = None
    seed: int | None = Field(None, ge=0)
    response_format: dict[str, Any] | None = None


class GenerateRequest(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"user_id": "alice", "adapter": "default", "inputs": "My pet is a", "parameters": {"max_new_tokens": 8}}
            ]
        },
    )

    user_id: str | None = Field(None, description="whose adapter: required with a service key; a user key's own")
    adapter: str | None = Field(None, description="adapter name (default: parameters.adapter_id, else `default`)")
    inputs: str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    stream: bool = Field(False, description="only read by POST /: true answers with Server-Sent Events")
