"""Cache invalidation between services: what the compressor publishes when a user is deleted or a key revoked,
and every gateway replica applies (drop the cached resolutions and keys it names).

A message is JSON on the pub/sub channel :data:`CHANNEL`: ``{"user_id": ...}``, ``{"key_id": ...}``, both, or
``{}`` for everything, the same body as the gateway's ``POST /v1/admin/invalidate``. This module holds only the
shape; who transports it (Redis pub/sub, HTTP) is the services' business.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["CHANNEL", "Invalidation"]

CHANNEL = "soppu:invalidate"


@dataclass(frozen=True, slots=True)
class Invalidation:
    user_id: str | None = None
    key_id: str | None = None

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in (("user_id", self.user_id), ("key_id", self.key_id)) if v is not None})

    @classmethod
    def from_json(cls, data: str | bytes) -> Invalidation:
        """The message in ``data``; ValueError when it is not one (not an object, unknown fields, not strings)."""
        body = json.loads(data)
        if not isinstance(body, dict) or not set(body) <= {"user_id", "key_id"}:
            raise ValueError("an invalidation is an object with user_id and/or key_id")
        if not all(isinstance(v, str) for v in body.values()):
            raise ValueError("user_id and key_id are strings")
        return cls(body.get("user_id"), body.get("key_id"))
