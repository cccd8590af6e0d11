"""The compressor's settings: one ``BaseSettings`` read from ``SOPPU_COMPRESSOR_*`` environment variables, plus
the names every service shares: ``SOPPU_STORE_URL`` (the bucket, ``s3://bucket`` or a directory; the S3 endpoint
and credentials come from ``S3_ENDPOINT_URL`` / ``AWS_*`` as boto3 reads them, and are never kept here) and
``SOPPU_ADMIN_KEY``.

The command line (``python -m compressor_service --port ...``) overrides them; see ``__main__``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from soppu.adapter import DEFAULT_LIMITS, Limits
from soppu.compression.distill import DistillSettings
from soppu.examples.cache import CHECKOUT_EXAMPLE_BASE
from soppu.protocol.redis_url import RedisUrl
from soppu.registry.policy import DEFAULT_PROMPTS, GateThresholds
from soppu.secret_checks import check_service_secrets

__all__ = ["CompressorSettings", "get_settings"]

_NONE = {"", "none", "off"}


def _default_base_model() -> Path | None:
    # The example fixture's model, when `make demo` has built it in this checkout: the behaviour check then works
    # out of the box.
    return CHECKOUT_EXAMPLE_BASE if (CHECKOUT_EXAMPLE_BASE / "config.json").is_file() else None


class CompressorSettings(BaseSettings):
    # populate_by_name: tests and the CLI pass store_url=/admin_key= by name; the environment uses the aliases.
    # hide_input_in_errors: a refused setting's message must never quote a secret.
    model_config = SettingsConfigDict(
        env_prefix="SOPPU_COMPRESSOR_", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    host: str = "127.0.0.1"
    port: int = Field(8081, ge=1, le=65535)
    store_url: str = Field(
        ".cache/store",
        validation_alias=AliasChoices("SOPPU_COMPRESSOR_STORE_URL", "SOPPU_STORE_URL", "store_url"),
        description="s3://bucket, file:///path or a directory (env SOPPU_STORE_URL)",
    )
    admin_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("SOPPU_ADMIN_KEY", "admin_key"),
        description="the admin key (env SOPPU_ADMIN_KEY); unset: no admin access",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where compression and the gate run")
    torch_threads: int | None = Field(
        None, ge=1, description="CPU threads torch may use (default: torch's choice); 1 is steadiest on a busy box"
    )

    # Compression policy (soppu.registry.policy.CompressionPolicy).
    mode: Literal["full", "diag"] = Field("full", description="JD-Full (R x R cores) or JD-Diag (diagonal cores)")
    rank: int | None = Field(
        16, ge=1, le=128, description="shared rank R of a cohort's bases (at most 128, LoRAX's); unset: by max_error"
    )
    max_error: float | None = Field(None, gt=0, description="with no rank: the mean relative error R must meet")
    refit_after: int = Field(1, ge=1, description="refit a cohort once this many members wait on originals")
    export_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="dtype of the published exports; auto: the one LoRAX serves the base model in (its torch_dtype, "
        "float32 as float16), or the adapter's own without a base model",
    )

    # Quality gate (soppu.registry.policy.QualityGate).
    gate_max_error: float = Field(
        0.5, gt=0, description="worst module's relative error; decides only where behaviour cannot be judged"
    )
    gate_kl_lost: float = Field(
        GateThresholds.max_kl_lost, ge=0, description="on the original's own text: KL to it over the base model's"
    )
    gate_agreement: float = Field(
        GateThresholds.min_agreement, ge=0, le=1, description="greedy agreement on the original's own text"
    )
    gate_prompts: list[str] | None = Field(
        None,
        min_length=1,
        description=f"JSON list: where the original starts its own text (default: {list(DEFAULT_PROMPTS)} for a "
        "chat model, the start of text otherwise)",
    )
    gate_texts: int = Field(8, ge=1, le=256, description="texts the original writes for each gate check")
    gate_tokens: int = Field(24, ge=1, le=512, description="tokens per gate text")
    fit_steps: int = Field(
        DistillSettings.steps, ge=0, le=10_000, description="Adam steps of a behaviour fit (0: no fitting step)"
    )
    min_basis_members: int = Field(
        4, ge=1, description="a newcomer is served compressed only on a basis fitted on at least this many members"
    )
    fit_texts: int = Field(DistillSettings.texts, ge=1, le=256, description="texts a behaviour fit learns from")
    fit_tokens: int = Field(DistillSettings.tokens, ge=1, le=512, description="tokens per fitting text")
    base_model: Path | None = Field(
        default_factory=_default_base_model,
        description="local model directory for the behaviour check (default: the checkout's .cache/examples/base if "
        "`make demo` built it; "
        "'none' switches the check off)",
    )
    base_model_id: str | None = Field(
        None, description="the base_model_name_or_path adapters use for base_model; unset: any adapter that fits it"
    )

    # Uploads and jobs.
    max_upload_bytes: int = Field(DEFAULT_LIMITS.max_archive_bytes, ge=1024, description="request body cap")
    max_weights_bytes: int = Field(DEFAULT_LIMITS.max_weights_bytes, ge=1024)
    max_unpacked_bytes: int = Field(DEFAULT_LIMITS.max_unpacked_bytes, ge=1024)
    max_archive_members: int = Field(DEFAULT_LIMITS.max_archive_members, ge=2)
    workers: int = Field(1, ge=0, description="jobs run at once (0: accept uploads, run nothing)")
    queue_size: int = Field(1024, ge=1, description="queued jobs beyond this answer 503 busy")
    max_concurrent_uploads: int = Field(
        4, ge=1, description="uploads received at once; one more answers 503 busy (each holds its files in memory)"
    )
    retry_after_s: int = Field(5, ge=1, description="Retry-After of a 503 (store unavailable, queue full)")
    lease_ttl_s: float = Field(
        30.0,
        gt=0,
        description="how long a replica's lock on a user or cohort outlives it: renewed while held, taken over after",
    )
    job_reclaim_s: float | None = Field(
        None,
        gt=0,
        description="how often a replica looks for pending jobs nobody holds, a dead one's say (default: lease_ttl_s)",
    )
    job_retry_s: float = Field(
        1.0, ge=0.01, le=60, description="first wait before a job the store interrupted runs again (doubling to 60 s)"
    )

    # The HTTP edge (soppu.protocol.request_body) and the server.
    max_json_bytes: int = Field(64 * 1024, ge=1024, description="cap on every body but an upload's (413 too_large)")
    body_timeout_s: float = Field(
        600.0, gt=0, description="a whole request body, uploads included, must arrive within this, else 408"
    )
    keep_alive_s: int = Field(
        75, ge=1, description="idle client connections stay open this long: longer than client pools keep them"
    )

    # Gateways told about deleted users and revoked keys (best effort).
    gateway_urls: list[str] = Field([], description='JSON list, e.g. ["http://127.0.0.1:8080"]')
    notify_timeout_s: float = Field(2.0, gt=0)
    redis_url: RedisUrl = Field(
        SecretStr(""),
        description="redis://[:password@]host:port[/db]: also publish each invalidation on the channel every gateway "
        "replica subscribes to (soppu:invalidate); empty: the gateway URLs only. A secret: it may hold a password",
    )

    @model_validator(mode="after")
    def _strong_secrets(self) -> CompressorSettings:
        key = None if self.admin_key is None else self.admin_key.get_secret_value()
        check_service_secrets(key, self.store_url, os.environ)
        return self

    @field_validator("base_model", mode="before")
    @classmethod
    def _none_word(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() in _NONE else value

    @field_validator("gateway_urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"gateway url must start with http:// or https://, got {url!r}")
        return [url.rstrip("/") for url in urls]

    def limits(self) -> Limits:
        """The adapter reader's limits; an archive can be no larger than the body that carries it."""
        return Limits(
            max_weights_bytes=self.max_weights_bytes,
            max_archive_bytes=self.max_upload_bytes,
            max_unpacked_bytes=self.max_unpacked_bytes,
            max_archive_members=self.max_archive_members,
        )


@lru_cache
def get_settings() -> CompressorSettings:
    return CompressorSettings()
