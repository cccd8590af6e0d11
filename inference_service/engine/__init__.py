"""The engine behind the HTTP layer, in tiers (as vLLM splits serving):

- **loader**: ``sources`` (where bytes come from: S3 as LoRAX reads it, or local paths) and ``formats`` (what
  they mean: PEFT LoRA, or a SOPPU core on a shared cohort basis);
- **manager**: ``cache`` (LRU with a byte budget, keyed by ETag, single-flight loads);
- **engine core** (as vLLM's v1 splits it): ``engine`` (the public API: intake, the loop, detokenized outputs),
  ``scheduler`` (decisions only: who joins the batch, when a row finishes or leaves) and ``runner`` (runs the
  model, and keeps the running rows' cache and adapter plan);
- **layers**: ``layers`` (per-row adapter math: gathered LoRA, shared basis + per-row core), applied by
  ``runner`` inside a Hugging Face causal LM, with ``kv`` keeping the batch's key/value cache.

No web framework here: :mod:`inference_service.app` is the HTTP layer over :class:`Engine`, and
:mod:`inference_service.errors` maps the engine's typed errors onto HTTP statuses.
"""

from .cache import AdapterCache, CacheStats
from .engine import Engine, EngineConfig, EngineInfo, EngineStats
from .sources import SourceRules
from .types import (
    AdapterLoadFailed,
    AdapterRef,
    AdapterRefused,
    AdapterSourceKind,
    EngineError,
    FinishReason,
    GenerationFailed,
    GenerationParams,
    GenerationResult,
    Overloaded,
    TokenInfo,
    ValidationFailed,
)

__all__ = [
    "AdapterCache",
    "AdapterLoadFailed",
    "AdapterRef",
    "AdapterRefused",
    "AdapterSourceKind",
    "CacheStats",
    "Engine",
    "EngineConfig",
    "EngineError",
    "EngineInfo",
    "EngineStats",
    "FinishReason",
    "GenerationFailed",
    "GenerationParams",
    "GenerationResult",
    "Overloaded",
    "SourceRules",
    "TokenInfo",
    "ValidationFailed",
]
