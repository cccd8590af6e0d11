"""Resolution: (user, adapter name) -> which stored adapter a backend of each kind is given.

It reads ``pointers/{user}/{adapter}/current.json`` (a :class:`~soppu.registry.Pointer`), then the
:class:`~soppu.registry.Manifest` it names. Manifests are immutable (a new version gets a new key), so only the
pointer is ever revalidated: after ``resolution_ttl_s`` a HEAD of the pointer either confirms the cached
ETag (no further reads) or the pointer and manifest are read again. A new version is therefore served within
the TTL of its publication, and a removed pointer is refused at the first lookup after it; the admin
invalidation drops entries at once.

Per backend kind: ``lorax`` always gets the PEFT export; ``engine`` gets the compressed core when the version has
one. On S3 the id is ``s3://{bucket}/{prefix}`` (``adapter_source="s3"``); on a local-directory store it is
the absolute path of the prefix (``adapter_source="local"``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from soppu.errors import ObjectNotFound, StoreUnavailable
from soppu.registry import Manifest, Pointer
from soppu.store.base import ObjectStore
from soppu.store.layout import pointer_key, s3_adapter_id

from .caching import Entry, TtlCache
from .errors import GatewayError, StoreDown
from .settings import BackendKind

__all__ = ["AdapterTarget", "Resolution", "Resolver"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AdapterTarget:
    adapter_id: str
    adapter_source: str


@dataclass(frozen=True, slots=True)
class Resolution:
    user_id: str
    adapter: str
    version: int
    affinity: str  # what routing hashes: the version's export prefix, the same whatever the backend kind
    targets: Mapping[BackendKind, AdapterTarget]


# Which stored prefix each kind of backend can load, from one version's manifest.
_PREFIX_FOR: dict[BackendKind, Callable[[Manifest], str]] = {
    BackendKind.LORAX: lambda m: m.export_prefix,
    BackendKind.ENGINE: lambda m: m.core_prefix or m.export_prefix,
}


def _s3_locator(netloc: str, _: str) -> Callable[[str], AdapterTarget]:
    return lambda prefix: AdapterTarget(s3_adapter_id(netloc, prefix), "s3")


def _local_locator(_: str, path: str) -> Callable[[str], AdapterTarget]:
    root = Path(unquote(path))
    return lambda prefix: AdapterTarget(str(root / prefix), "local")


_LOCATORS = {"s3": _s3_locator, "file": _local_locator}


def locator(store_url: str) -> Callable[[str], AdapterTarget]:
    """How a stored prefix is named to a backend, from the store's own URL (``s3://b`` or ``file:///dir``)."""
    parts = urlsplit(store_url)
    if parts.scheme not in _LOCATORS:
        raise ValueError(f"cannot serve adapters from a store at {store_url!r}")
    return _LOCATORS[parts.scheme](parts.netloc, parts.path)


Cached = Entry[Resolution | None]


class ResolutionFailed(GatewayError):
    status, error_type = 500, "resolution_failed"


class Resolver:
    def __init__(self, store: ObjectStore, ttl_s: float, on_lookup: Callable[[str], None] = lambda _: None) -> None:
        self._store = store
        self._locate = locator(store.url)
        self._cache: TtlCache[tuple[str, str], Resolution | None] = TtlCache(ttl_s)
        self._on_lookup = on_lookup  # "hit", "revalidated" or "miss", for the metrics

    async def resolve(self, user_id: str, adapter: str) -> Resolution | None:
        """The current version of ``adapter`` of ``user_id``, or None if the user has no such adapter."""
        key = (user_id, adapter)
        entry = self._cache.fresh(key)
        if entry is not None:
            self._on_lookup("hit")
            return entry.value
        stale = self._cache.stale(key)
        entry = await self._cache.load(key, lambda: self._read(user_id, adapter, stale))
        return entry.value

    async def _read(self, user_id: str, adapter: str, stale: Cached | None) -> Cached:
        try:
            return await asyncio.to_thread(self._read_sync, user_id, adapter, stale)
        except StoreUnavailable as e:
            raise StoreDown(f"cannot resolve the adapter: {e.message}") from e

    def _read_sync(self, user_id: str, adapter: str, stale: Cached | None) -> Cached:
        key = pointer_key(user_id, adapter)
        now = self._cache.now()
        if stale is not None and stale.etag is not None:
            try:
                info = self._store.head(key)
            except ObjectNotFound:
                self._on_lookup("miss")
                return Entry(None, now)
            if info.etag == stale.etag:
                self._on_lookup("revalidated")
                return Entry(stale.value, now, stale.etag)
        self._on_lookup("miss")
        try:
            pointer_obj = self._store.get(key)
        except ObjectNotFound:
            return Entry(None, now)
        try:
            pointer = Pointer.from_json(pointer_obj.data)
            manifest = Manifest.from_json(self._store.get(pointer.manifest_key).data)
        except ObjectNotFound:
            # A pointer is written after its manifest, so this is a damaged bucket, not a race: refuse loudly.
            _log.error("pointer %s names a missing manifest", key)
            raise ResolutionFailed(f"the current version of adapter {adapter!r} is damaged") from None
        except (ValueError, TypeError, KeyError) as e:
            _log.error("unreadable pointer or manifest for %s: %s", key, e)
            raise ResolutionFailed(f"the current version of adapter {adapter!r} is unreadable") from e
        resolution = Resolution(
            user_id=user_id,
            adapter=adapter,
            version=manifest.version,
            affinity=manifest.export_prefix,
            targets={kind: self._locate(prefix(manifest)) for kind, prefix in _PREFIX_FOR.items()},
        )
        return Entry(resolution, now, pointer_obj.info.etag)

    def invalidate(self, user_id: str | None = None) -> int:
        """Forget the resolutions of ``user_id`` (every user's when None)."""
        if user_id is None:
            return self._cache.invalidate()
        return self._cache.invalidate(lambda key, _: key[0] == user_id)
