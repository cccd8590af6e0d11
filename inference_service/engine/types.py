"""What goes into the engine and what comes out: generation parameters, adapter references, streamed
tokens, the final result, and the engine's error tree.

Error tree (``code`` is a stable, machine-readable name; a ValidationFailed may carry a finer one, such as
``input_too_long``). The engine knows nothing of HTTP: :mod:`inference_service.errors` maps each class to the
status and ``error_type`` LoRAX answers with::

    EngineError                     engine_error         anything else (shutting down, no result)
    ├── ValidationFailed            invalid_request      bad parameters or prompt
    ├── AdapterRefused              adapter_refused      a source, bucket or path this engine does not serve
    ├── AdapterLoadFailed           adapter_load_failed  adapter missing, unreadable or not for this model
    ├── Overloaded                  overloaded           queue full
    └── GenerationFailed            generation_failed    the forward pass or the sampling failed

``message`` is what the client reads: it names the adapter id the client sent, never a storage path, a file
the client did not name or an exception's text. ``detail`` (paths, store errors) is for the server's log only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

__all__ = [
    "AdapterLoadFailed",
    "AdapterRef",
    "AdapterRefused",
    "AdapterSourceKind",
    "EngineError",
    "FinishReason",
    "GenerationFailed",
    "GenerationParams",
    "GenerationResult",
    "Overloaded",
    "TokenInfo",
    "ValidationFailed",
]

FinishReason = Literal["length", "eos_token", "stop_sequence"]


class AdapterSourceKind(StrEnum):
    S3 = "s3"  # adapter_id = s3://bucket/key-prefix (endpoint and credentials from S3_ENDPOINT_URL / AWS_*)
    LOCAL = "local"  # adapter_id = a directory (PEFT files or core.safetensors) or a core file


@dataclass(frozen=True, slots=True)
class AdapterRef:
    """Where an adapter's bytes come from. ``None`` in place of a ref means the base model."""

    source: AdapterSourceKind
    adapter_id: str


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Validated sampling and stopping parameters (the HTTP layer maps LoRAX's names onto these)."""

    max_new_tokens: int = 20
    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos_token: bool = False
    decoder_input_details: bool = False  # also return the prompt tokens with their logprobs


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: int
    text: str
    logprob: float | None  # None only for the first prompt token in ``prefill``
    special: bool = False
    final: bool = False  # the generation's last token: its GenerationResult follows at once


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """The last item a generation yields, after every TokenInfo."""

    generated_text: str
    finish_reason: FinishReason
    prompt_tokens: int
    generated_tokens: int
    seed: int | None
    prefill: list[TokenInfo] = field(default_factory=list)  # filled when decoder_input_details was asked
    queue_s: float = 0.0  # from acceptance to the prefill that admitted it into the batch
    inference_s: float = 0.0  # from that prefill to the last token


class EngineError(Exception):
    code: str = "engine_error"

    def __init__(self, message: str, *, code: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.detail = detail  # logged, never sent


class AdapterRefused(EngineError):
    """Refused before any storage is touched, so the answer is the same whether the adapter exists or not."""

    code = "adapter_refused"


class ValidationFailed(EngineError):
    code = "invalid_request"


class AdapterLoadFailed(EngineError):
    code = "adapter_load_failed"


class Overloaded(EngineError):
    code = "overloaded"


class GenerationFailed(EngineError):
    code = "generation_failed"
