"""LoRAX's shapes as the gateway takes them: the shared ones of :mod:`soppu.protocol.lorax`, plus ``user_id`` and
``adapter``, and no defaults on the parameters (each backend applies its own). Unknown keys are dropped, so
nothing the gateway does not know is forwarded. ``adapter_id`` is an adapter NAME here (never a storage id: the
gateway resolves it), and ``adapter_source`` / ``api_token`` are ignored and never forwarded.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from soppu.protocol import lorax
from soppu.protocol.lorax import (
    Details,
    ErrorResponse,
    GenerateResponse,
    PrefillToken,
    StreamDetails,
    StreamResponse,
    Token,
)
from soppu.protocol.notes import schema_notes

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


class GenerateParameters(lorax.GenerateParameters):
    model_config = ConfigDict(
        json_schema_extra=schema_notes(
            {
                "adapter_id": "the adapter NAME (default: `default`); never a storage path",
                "adapter_source": "ignored: the gateway decides where adapters come from",
                "merged_adapters": "not allowed through the gateway: must be null",
                "api_token": "ignored and never forwarded",
                "max_new_tokens": "default and cap: the gateway's settings",
            },
            examples=[{"adapter_id": "default", "max_new_tokens": 8}],
        )
    )

    # Null, not LoRAX's false: the gateway forwards only what the caller set (exclude_none), so each backend
    # applies its own defaults.
    do_sample: bool | None = None
    ignore_eos_token: bool | None = None
    return_full_text: bool | None = None
    watermark: bool | None = None
    details: bool | None = None
    decoder_input_details: bool | None = None
    # Checked here, not left to the backend: the gateway applies its default and cap to it before forwarding.
    max_new_tokens: int | None = Field(None, gt=0)


class GenerateRequest(lorax.GenerateRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"user_id": "alice", "adapter": "default", "inputs": "My pet is a", "parameters": {"max_new_tokens": 8}}
            ]
        },
    )

    user_id: str | None = Field(None, description="whose adapter: required with a service key; a user key's own")
    adapter: str | None = Field(None, description="adapter name (default: parameters.adapter_id, else `default`)")
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)  # the gateway's own defaults
