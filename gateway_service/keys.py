"""Authentication: the presented API key -> a :class:`~soppu.auth.Principal`, through ``soppu.auth.KeyRing``
(the same hashed records the compressor issues) behind a short TTL cache.

The cache is keyed by SHA-256 of the presented key, so no secret is kept. Refusals are cached too (a flood of
bad keys costs one store read per key per TTL). A revoked key stays usable for at most ``key_cache_ttl_s``,
or not at all once ``POST /v1/admin/invalidate`` names it or its user.
"""

from __future__ import annotations

import asyncio
import hashlib

from soppu.auth import KeyRing, Principal
from soppu.errors import StoreUnavailable
from soppu.store.base import ObjectStore

from .caching import Entry, TtlCache
from .errors import StoreDown

__all__ = ["KeyCache"]


class KeyCache:
    def __init__(self, store: ObjectStore, admin_key: str | None, ttl_s: float) -> None:
        self._ring = KeyRing(store, admin_key)
        self._cache: TtlCache[bytes, Principal | None] = TtlCache(ttl_s)

    async def authenticate(self, presented: str | None) -> Principal | None:
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        entry = self._cache.fresh(digest)
        if entry is None:
            entry = await self._cache.load(digest, lambda: self._read(presented))
        return entry.value

    async def _read(self, presented: str) -> Entry[Principal | None]:
        try:
            principal = await asyncio.to_thread(self._ring.authenticate, presented)
        except StoreUnavailable as e:
            raise StoreDown(f"cannot check the API key: {e.message}") from e
        return Entry(principal, self._cache.now())

    def invalidate(self, *, user_id: str | None = None, key_id: str | None = None) -> int:
        """Forget cached keys of ``user_id`` and/or the key ``key_id`` (everything when both are None)."""
        if user_id is None and key_id is None:
            return self._cache.invalidate()

        def match(_: bytes, principal: Principal | None) -> bool:
            # Cached refusals go too: the key may have been issued since it was refused.
            if principal is None:
                return True
            return (user_id is not None and principal.user_id == user_id) or (
                key_id is not None and principal.key_id == key_id
            )

        return self._cache.invalidate(match)
