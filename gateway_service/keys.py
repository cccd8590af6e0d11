"""Authentication: the presented API key -> a :class:`~soppu.auth.Principal`, through ``soppu.auth.KeyRing``
(the same hashed records the compressor issues) behind a short TTL cache.

The cache holds key records by key id (an id is safe to keep; the record holds only the secret's SHA-256,
as the bucket does), and refusals as ``None`` by id too. So a malformed key (its shape or checksum is wrong)
costs no store read, a well-formed key with an unknown id costs one read per id per TTL, and wrong secrets for
a known id cost none. A revoked key stays usable for at most ``key_cache_ttl_s``, or not at all once
``POST /v1/admin/invalidate`` names it or its user.
"""

from __future__ import annotations

import asyncio

from soppu.auth import KeyRecord, KeyRing, Principal, holder
from soppu.errors import StoreUnavailable
from soppu.store.base import ObjectStore

from .caching import Entry, TtlCache
from .errors import StoreDown

__all__ = ["KeyCache"]


class KeyCache:
    def __init__(self, store: ObjectStore, admin_key: str | None, ttl_s: float) -> None:
        # No negative cache in the ring: refusals are cached here, where an invalidation can drop them.
        self._ring = KeyRing(store, admin_key, unknown_ttl_s=0)
        self._cache: TtlCache[str, KeyRecord | None] = TtlCache(ttl_s)

    async def authenticate(self, presented: str | None) -> Principal | None:
        """:meth:`soppu.auth.KeyRing.authenticate`, with the record looked up in the cache, off the event loop."""
        screened = self._ring.screen(presented)
        if not isinstance(screened, tuple):
            return screened
        key_id, secret = screened
        entry = self._cache.fresh(key_id)
        if entry is None:
            entry = await self._cache.load(key_id, lambda: self._read(key_id))
        return holder(entry.value, secret)

    async def _read(self, key_id: str) -> Entry[KeyRecord | None]:
        try:
            record = await asyncio.to_thread(self._ring.get, key_id)
        except StoreUnavailable as e:
            raise StoreDown(f"cannot check the API key: {e.message}") from e
        return Entry(record, self._cache.now())

    def invalidate(self, *, user_id: str | None = None, key_id: str | None = None) -> int:
        """Forget cached keys of ``user_id`` and/or the key ``key_id`` (everything when both are None)."""
        if user_id is None and key_id is None:
            return self._cache.invalidate()

        def match(cached_id: str, record: KeyRecord | None) -> bool:
            # Cached refusals go too: the key may have been issued since it was refused.
            if record is None:
                return True
            return (user_id is not None and record.user_id == user_id) or cached_id == key_id

        return self._cache.invalidate(match)
