"""LoRAX's shapes for ``/generate``, ``/generate_stream`` and ``/``: the shared ones of :mod:`soppu.protocol.lorax`,
with this engine's notes on each parameter. Ranges are checked there; what depends on the settings or on what the
engine supports is checked in :mod:`inference_service.params`.
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


_ADAPTER_EXAMPLE = {"adapter_id": "s3://adapters/users/user-000/v00000001", "adapter_source": "s3"}


class GenerateParameters(lorax.GenerateParameters):
    # LoRAX's parameters as they are; only the notes on what this engine does with each are its own.
    model_config = ConfigDict(
        json_schema_extra=schema_notes(
            {
                "adapter_id": "s3://bucket/prefix or an absolute directory; null: base model",
                "adapter_source": '"s3" (the default when adapter_id is set) or "local"',
                "merged_adapters": "not supported: must be null",
                "api_token": "accepted and ignored (never logged)",
                "best_of": "only 1 is supported",
                "frequency_penalty": "only 0 is supported",
                "presence_penalty": "only 0 is supported",
                "typical_p": "not supported: must be null",
                "max_new_tokens": "default: the server's default_max_new_tokens",
                "stop": "stop sequences (at most 4, as in LoRAX)",
                "truncate": "not supported: must be null",
                "watermark": "not supported: must be false",
                "details": "return finish reason, token counts and tokens",
                "decoder_input_details": "also return the prompt tokens in details",
                "return_k_alternatives": "not supported: must be null",
                "response_format": "not supported: must be null",
            },
            examples=[{**_ADAPTER_EXAMPLE, "max_new_tokens": 8, "details": True}],
        )
    )


class GenerateRequest(lorax.GenerateRequest):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"inputs": "My favourite colour is", "parameters": {**_ADAPTER_EXAMPLE, "max_new_tokens": 8}}]
        }
    )

    parameters: GenerateParameters = Field(default_factory=GenerateParameters)  # this engine's notes
