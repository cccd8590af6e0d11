"""The gateway's settings: one ``BaseSettings`` read from ``SOPPU_GATEWAY_*`` environment variables, plus the
two names every service shares: ``SOPPU_STORE_URL`` (the bucket, ``s3://bucket`` or a directory; S3 endpoint and
credentials come from ``S3_ENDPOINT_URL`` / ``AWS_*`` as boto3 reads them) and ``SOPPU_ADMIN_KEY``.

The command line (``python -m gateway_service --port ...``) overrides them; see ``__main__``.
"""

from __future__ import annotations

import os
from enum import StrEnum
from functools import lru_cache
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from soppu.protocol.redis_url import RedisUrl
from soppu.secret_checks import check_service_secrets

__all__ = ["BackendConfig", "BackendKind", "GatewaySettings", "get_settings"]


class BackendKind(StrEnum):
    """What a backend can load: ``lorax`` takes PEFT exports only; ``engine`` (ours) also takes SOPPU cores."""

    ENGINE = "engine"
    LORAX = "lorax"


class BackendConfig(BaseModel):
    url: str = Field(description="base URL, e.g. http://127.0.0.1:8082")
    kind: BackendKind = BackendKind.ENGINE
    discover: Literal["dns"] | None = Field(
        None,
        description="dns: the URL's host names many backends (a Kubernetes headless Service); each of its addresses "
        "is one backend with the same scheme, port and kind, looked up again on every health-check round",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"backend url must start with http:// or https://, got {url!r}")
        return url.rstrip("/")


class GatewaySettings(BaseSettings):
    # populate_by_name: tests and the CLI pass store_url=/admin_key= by name; the environment uses the aliases.
    # hide_input_in_errors: a refused setting's message must never quote a secret.
    model_config = SettingsConfigDict(
        env_prefix="SOPPU_GATEWAY_", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    store_url: str = Field(
        ".cache/store",
        validation_alias=AliasChoices("SOPPU_STORE_URL", "store_url"),
        description="s3://bucket, file:///path or a directory (env SOPPU_STORE_URL)",
    )
    admin_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("SOPPU_ADMIN_KEY", "admin_key"),
        description="the admin key (env SOPPU_ADMIN_KEY); unset: no admin access",
    )
    backends: list[BackendConfig] = Field(
        default_factory=lambda: [BackendConfig(url="http://127.0.0.1:8082")],
        description='JSON list, e.g. [{"url": "http://127.0.0.1:8082", "kind": "engine"}]',
    )
    no_adapter: Literal["base", "404"] = Field(
        "404", description="a user without a `default` adapter: serve the base model, or answer 404"
    )
    resolution_ttl_s: float = Field(2.0, ge=0, description="how long a user->adapter resolution is trusted")
    key_cache_ttl_s: float = Field(2.0, ge=0, description="how long an authenticated key is trusted")
    # Per-user token buckets; a rate of 0 switches that limit off.
    user_requests_per_s: float = Field(20.0, ge=0)
    user_request_burst: int = Field(40, ge=1)
    user_tokens_per_s: float = Field(2000.0, ge=0, description="generated tokens per second")
    user_token_burst: int = Field(20000, ge=1)
    max_concurrent_requests: int = Field(512, ge=1, description="requests beyond this answer 503 at once")
    user_max_in_flight: int = Field(
        16, ge=0, description="one user's requests inside at once; more answer 429 too_many_in_flight (0: no cap)"
    )
    max_body_bytes: int = Field(1 << 20, ge=1024)
    body_timeout_s: float = Field(30.0, gt=0, description="the whole request body must arrive within this, else 408")
    keep_alive_s: int = Field(
        75, ge=1, description="idle client connections stay open this long: longer than client pools keep them"
    )
    default_max_new_tokens: int = Field(64, ge=1, description="applied when a request sets none")
    max_new_tokens_cap: int = Field(512, ge=1, description="larger requests are clamped to this")
    upstream_timeout_s: float = Field(120.0, gt=0, description="per upstream request (between events, streaming)")
    connect_timeout_s: float = Field(2.0, gt=0)
    upstream_idle_s: float = Field(
        4.0, gt=0, description="idle upstream connections are not reused after this: below the backends' keep-alive"
    )
    retries: int = Field(
        2, ge=0, description="extra attempts after a 429 (an overload error opening a stream too) or a connection error"
    )
    retry_backoff_s: float = Field(0.05, ge=0, description="first backoff; doubles per retry")
    health_interval_s: float = Field(2.0, gt=0)
    health_timeout_s: float = Field(
        1.0, gt=0, description="for GET /info, the health check (LoRAX and the engine answer it without the model)"
    )
    health_fallback_timeout_s: float = Field(
        30.0,
        gt=0,
        description="for GET /health, asked only of a backend without /info (LoRAX's /health runs a generation)",
    )
    virtual_nodes: int = Field(64, ge=1, description="points per backend on the consistent-hash ring")
    load_factor: float = Field(1.25, ge=1.0, description="bounded load: skip a backend over this x average")
    # Replicas: per-user limits and invalidations through Redis. The URL may carry a password: a secret.
    redis_url: RedisUrl = Field(
        SecretStr(""),
        description="redis://[:password@]host:port[/db] (or rediss://, unix://): per-user limits shared by every "
        "replica and invalidations by pub/sub; empty: this process's own limits",
    )
    redis_timeout_s: float = Field(
        0.1, gt=0, le=5, description="per Redis call, connecting included; slower counts as an outage"
    )
    redis_retry_s: float = Field(1.0, gt=0, description="after a Redis failure, limits are local this long")
    redis_pool_size: int = Field(16, ge=1, description="connections to Redis (one more is held by the subscriber)")

    @model_validator(mode="after")
    def _strong_secrets(self) -> GatewaySettings:
        key = None if self.admin_key is None else self.admin_key.get_secret_value()
        check_service_secrets(key, self.store_url, os.environ)
        return self

    @field_validator("backends")
    @classmethod
    def _some_backend(cls, backends: list[BackendConfig]) -> list[BackendConfig]:
        if not backends:
            raise ValueError("at least one backend is needed")
        urls = [b.url for b in backends]
        if len(set(urls)) != len(urls):
            raise ValueError(f"duplicate backend urls in {urls}")
        return backends


@lru_cache
def get_settings() -> GatewaySettings:
    return GatewaySettings()
