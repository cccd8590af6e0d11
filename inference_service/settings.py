"""The engine service's settings: one ``BaseSettings`` read from ``SOPPU_ENGINE_*`` environment variables.

The command line (``python -m inference_service --port ...``) overrides them; see ``__main__``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["EngineSettings", "get_settings"]


class EngineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SOPPU_ENGINE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8082, ge=1, le=65535)
    model: Path = Field(Path(".cache/examples/base"), description="directory of a Hugging Face causal LM")
    model_id: str | None = Field(None, description="the name /info and the OpenAI routes report; default: model dir")
    device: str = Field("auto", description="auto, cpu or cuda")
    max_batch_size: int = Field(32, ge=1)
    max_queue: int = Field(256, ge=1, description="requests waiting beyond this answer 429")
    adapter_cache_bytes: int = Field(1 << 30, ge=0)
    max_input_length: int = Field(1024, ge=1)
    max_total_tokens: int = Field(2048, ge=2)
    # LoRAX's default for a missing max_new_tokens is "the rest of the context"; a small default is kinder
    # to a shared CPU box, and clients that want more say so.
    default_max_new_tokens: int = Field(20, ge=1)
    max_new_tokens_cap: int = Field(512, ge=1)
    # The HTTP edge (soppu.protocol.request_body) and the server.
    body_timeout_s: float = Field(30.0, gt=0, description="the whole request body must arrive within this, else 408")
    keep_alive_s: int = Field(
        75, ge=1, description="idle connections stay open this long: longer than client pools keep them"
    )


@lru_cache
def get_settings() -> EngineSettings:
    return EngineSettings()
