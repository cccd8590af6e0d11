"""Telling the gateways that a user or a key is gone, so they drop what they cached about it at once.

Each gateway URL gets ``POST {gateway}/v1/admin/invalidate`` with ``{"user_id": ...}`` or ``{"key_id": ...}`` and
the admin key as Bearer. Behind a load balancer such a URL reaches one replica only, so with ``redis_url`` the
same body is also published on :data:`soppu.protocol.invalidation.CHANNEL`, which every gateway replica with
Redis subscribes to. Best effort both ways: the bucket is the truth and gateways' caches expire on their own
within seconds, so a failure is logged (gateway or Redis address and reason, never a key or a password) and
nothing is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from soppu.protocol.invalidation import CHANNEL, Invalidation

__all__ = ["GatewayNotifier"]

log = logging.getLogger(__name__)
_REDIS_DOWN = (RedisError, OSError, asyncio.TimeoutError)


class GatewayNotifier:
    def __init__(
        self, gateway_urls: list[str], admin_key: SecretStr | None, timeout_s: float, redis_url: str = ""
    ) -> None:
        self.gateway_urls = gateway_urls
        headers = {"Authorization": f"Bearer {admin_key.get_secret_value()}"} if admin_key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout_s)
        self._redis: Redis | None = None
        self._redis_at = "-"
        if redis_url:
            parts = urlsplit(redis_url)
            self._redis_at = parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"
            self._redis = Redis.from_url(
                redis_url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),
                decode_responses=True,
            )

    async def invalidate(self, *, user_id: str | None = None, key_ids: list[str] | None = None) -> None:
        messages = [Invalidation(user_id=user_id)] if user_id else []
        messages += [Invalidation(key_id=k) for k in key_ids or []]
        posts = (self._post(url, m) for url in self.gateway_urls for m in messages)
        publishes = (self._publish(m) for m in messages) if self._redis is not None else ()
        await asyncio.gather(*posts, *publishes)

    async def _post(self, gateway: str, message: Invalidation) -> None:
        body = {"user_id": message.user_id} if message.user_id else {"key_id": message.key_id}
        try:
            response = await self._client.post(f"{gateway}/v1/admin/invalidate", json=body)
        except httpx.HTTPError as e:
            log.warning("gateway %s not told to invalidate %s: %s", gateway, body, type(e).__name__)
            return
        if response.status_code >= 300:
            log.warning("gateway %s refused to invalidate %s: HTTP %d", gateway, body, response.status_code)

    async def _publish(self, message: Invalidation) -> None:
        assert self._redis is not None
        try:
            await self._redis.publish(CHANNEL, message.to_json())
        except _REDIS_DOWN as e:
            log.warning("invalidation %s not published on redis at %s: %s", message.to_json(), self._redis_at,
                        type(e).__name__)  # fmt: skip

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._redis is not None:
            with contextlib.suppress(*_REDIS_DOWN):
                await self._redis.aclose()
