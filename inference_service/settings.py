"""The engine service's settings: one ``BaseSettings`` read from ``SOPPU_ENGINE_*`` environment variables, plus
``SOPPU_STORE_URL``, the name every service shares for the bucket (``s3://bucket``).

Where adapters may come from is closed by default: S3 adapters only from ``s3_buckets``, or when that is empty
from the store's own bucket; local adapters only from under ``local_adapter_roots`` (none by default).

The command line (``python -m inference_service --port ...``) overrides them; see ``__main__``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from soppu.examples.cache import CHECKOUT_EXAMPLE_BASE
from soppu.secret_checks import check_s3_secret

__all__ = ["EngineSettings", "get_settings"]


class EngineSettings(BaseSettings):
    # populate_by_name: tests and the CLI pass store_url= by name; the environment uses SOPPU_STORE_URL.
    # hide_input_in_errors: a refused setting's message must never quote a secret.
    model_config = SettingsConfigDict(
        env_prefix="SOPPU_ENGINE_", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    host: str = "127.0.0.1"
    port: int = Field(8082, ge=1, le=65535)
    model: Path = Field(
        CHECKOUT_EXAMPLE_BASE,
        description="directory of a Hugging Face causal LM (default: the checkout's .cache/examples/base)",
    )
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
    max_body_bytes: int = Field(
        4 << 20,
        ge=1024,
        description="larger request bodies get 413 before they are read (a prompt is at most "
        "max_input_chars characters)",
    )
    keep_alive_s: int = Field(
        75, ge=1, description="idle connections stay open this long: longer than client pools keep them"
    )
    max_input_chars: int = Field(
        65536, ge=1, description="longer inputs are refused (422) before tokenizing, which is linear in length"
    )
    store_url: str | None = Field(
        None,
        validation_alias=AliasChoices("SOPPU_STORE_URL", "store_url"),
        description="the deployment's store (env SOPPU_STORE_URL); an s3://bucket is served when s3_buckets is empty",
    )
    s3_buckets: list[str] = Field(
        default_factory=list,
        description='S3 buckets adapters may come from: names or fnmatch patterns (JSON list, e.g. ["soppu"]); '
        "empty: the bucket of SOPPU_STORE_URL, or none",
    )
    local_adapter_roots: list[Path] = Field(
        default_factory=list,
        description="directories local adapters may come from (JSON list); empty: adapter_source=local is refused",
    )

    @model_validator(mode="after")
    def _strong_s3_secret(self) -> EngineSettings:
        check_s3_secret(os.environ)  # the S3 adapter source reads it through boto3
        return self

    def served_buckets(self) -> tuple[str, ...]:
        """The S3 buckets (or patterns) adapters may come from."""
        if self.s3_buckets:
            return tuple(self.s3_buckets)
        if self.store_url and self.store_url.startswith("s3://"):
            bucket = self.store_url.removeprefix("s3://").split("/", 1)[0]
            return (bucket,) if bucket else ()
        return ()


@lru_cache
def get_settings() -> EngineSettings:
    return EngineSettings()
