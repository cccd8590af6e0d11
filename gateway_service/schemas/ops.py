"""Shapes of the operational and admin routes: readiness and cache invalidation."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["InvalidateRequest", "InvalidateResponse", "Readiness"]


class InvalidateRequest(BaseModel):
    """Name a user, a key, or both; an empty body drops every cached resolution and key."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"user_id": "alice"}]})

    user_id: str | None = Field(None, description="drop this user's resolutions and cached keys")
    key_id: str | None = Field(None, description="drop this key (after its revocation)")


class InvalidateResponse(BaseModel):
    resolutions: int = Field(description="cached resolutions dropped")
    keys: int = Field(description="cached keys dropped")


class Readiness(BaseModel):
    ready: bool
    healthy_backends: int
    backends: int
    store: bool
    limits: Literal["shared", "local"] = Field(
        description="shared: per-user limits kept in Redis for every replica; local: this process's own"
    )
    redis: bool | None = Field(
        description="whether Redis answers (null: none configured); a Redis outage never makes a replica unready"
    )
