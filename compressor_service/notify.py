"""Telling the gateways that a user or a key is gone, so they drop what they cached about it at once.

Each gateway gets ``POST {gateway}/v1/admin/invalidate`` with ``{"user_id": ...}`` or ``{"key_id": ...}`` and the
admin key as Bearer. Best effort: the bucket is the truth and gateways' caches expire on their own within
seconds, so a failure is logged (gateway and reason, never the key) and nothing is retried.
"""

from __future__ import annotations

import asyncio
import logging

import httpx
from pydantic import SecretStr

__all__ = ["GatewayNotifier"]

log = logging.getLogger(__name__)


class GatewayNotifier:
    def __init__(self, gateway_urls: list[str], admin_key: SecretStr | None, timeout_s: float) -> None:
        self.gateway_urls = gateway_urls
        headers = {"Authorization": f"Bearer {admin_key.get_secret_value()}"} if admin_key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout_s)

    async def invalidate(self, *, user_id: str | None = None, key_ids: list[str] | None = None) -> None:
        bodies = ([{"user_id": user_id}] if user_id else []) + [{"key_id": k} for k in key_ids or []]
        await asyncio.gather(*(self._post(url, body) for url in self.gateway_urls for body in bodies))

    async def _post(self, gateway: str, body: dict[str, str]) -> None:
        try:
            response = await self._client.post(f"{gateway}/v1/admin/invalidate", json=body)
        except httpx.HTTPError as e:
            log.warning("gateway %s not told to invalidate %s: %s", gateway, body, type(e).__name__)
            return
        if response.status_code >= 300:
            log.warning("gateway %s refused to invalidate %s: HTTP %d", gateway, body, response.status_code)

    async def aclose(self) -> None:
        await self._client.aclose()
