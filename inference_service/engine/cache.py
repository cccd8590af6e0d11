"""The adapter manager: an in-memory LRU of loaded adapters with a byte budget, and single-flight loading.

An entry is keyed by (source, bucket or root, path, format, and the version tag of every file it was built
from), so an object replaced under the same key is a different entry: stale weights are never served. A
location's listing is re-read at most every ``revalidate_s`` seconds (0: on every request).

Concurrent requests for one cold adapter share one load (and so one download). A compressed adapter is its
core (a few KB) plus its cohort's bases, which are loaded once and shared by every core that names the same
``basis_id``; the bases are budgeted as their own entry.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from soppu.adapter.archive import CONFIG_NAME, WEIGHTS_NAME
from soppu.store.layout import CORE_NAME

from .formats import (
    LoadedBasis,
    LoadedCore,
    LoadedLora,
    ModelShapes,
    detect_format,
    load_basis,
    load_core,
    load_lora,
    parse_core,
)
from .sources import SOURCES, AdapterSource, Location
from .types import AdapterLoadFailed, AdapterRef, AdapterSourceKind

__all__ = ["AdapterCache", "CacheStats"]


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int
    bytes: int
    downloads: int  # files fetched from a source since start
    hits: int
    misses: int


class AdapterCache:
    def __init__(self, shapes: ModelShapes, *, budget_bytes: int, revalidate_s: float = 1.0) -> None:
        self._shapes = shapes
        self._budget = budget_bytes
        self._revalidate_s = revalidate_s
        self._sources: dict[AdapterSourceKind, AdapterSource] = {kind: cls() for kind, cls in SOURCES.items()}
        self._entries: OrderedDict[tuple[Any, ...], tuple[Any, int]] = OrderedDict()  # key -> (value, bytes)
        self._inflight: dict[tuple[Any, ...], asyncio.Future[Any]] = {}
        self._listings: dict[Location, tuple[float, dict[str, str]]] = {}
        self._bytes = 0
        self._downloads = self._hits = self._misses = 0

    @property
    def stats(self) -> CacheStats:
        return CacheStats(len(self._entries), self._bytes, self._downloads, self._hits, self._misses)

    async def get(self, ref: AdapterRef) -> LoadedLora | LoadedCore:
        """The loaded adapter ``ref`` names; AdapterLoadFailed if it is missing or invalid."""
        source = self._sources[ref.source]
        location = source.locate(ref.adapter_id)
        files = await self._listing(source, location)
        kind = "soppu-core" if location.only else detect_format(set(files), str(location))
        key = (ref.source, location, kind, tuple(sorted(files.items())))
        return await self._single_flight(key, lambda: self._load(source, location, kind, files))

    # --- internals -------------------------------------------------------------------------------------

    async def _listing(self, source: AdapterSource, location: Location) -> dict[str, str]:
        cached = self._listings.get(location)
        if cached is not None and time.monotonic() - cached[0] < self._revalidate_s:
            return cached[1]
        files = await asyncio.to_thread(source.listing, location)
        if not files:
            raise AdapterLoadFailed(f"no adapter at {location}")
        if len(self._listings) > 4096:  # bounded: listings are cheap to redo
            self._listings.clear()
        self._listings[location] = (time.monotonic(), files)
        return files

    async def _single_flight(self, key: tuple[Any, ...], load: Callable[[], Awaitable[Any]]) -> Any:
        if key in self._entries:
            self._entries.move_to_end(key)
            self._hits += 1
            return self._entries[key][0]
        if key in self._inflight:
            self._hits += 1
            return await asyncio.shield(self._inflight[key])
        self._misses += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await load()
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved here, so an unawaited failure is not logged as lost
            raise
        finally:
            del self._inflight[key]
        future.set_result(value)
        self._insert(key, value)
        return value

    def _insert(self, key: tuple[Any, ...], value: Any) -> None:
        size = value.nbytes
        self._entries[key] = (value, size)
        self._bytes += size
        # Evict least recently used entries, never the one just loaded. Evicted adapters that running requests
        # still hold stay alive until those finish; only the cache forgets them.
        while self._bytes > self._budget and len(self._entries) > 1:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted

    async def _read(self, source: AdapterSource, location: Location, name: str) -> bytes:
        self._downloads += 1
        return await asyncio.to_thread(source.read, location, name)

    async def _load(
        self, source: AdapterSource, location: Location, kind: str, files: dict[str, str]
    ) -> LoadedLora | LoadedCore:
        where = str(location)
        if kind == "peft":
            data = {name: await self._read(source, location, name) for name in (CONFIG_NAME, WEIGHTS_NAME)}
            return await asyncio.to_thread(load_lora, data, self._shapes, where)
        core_name = location.only or CORE_NAME
        core_data = await self._read(source, location, core_name)
        core = await asyncio.to_thread(parse_core, core_data, where)
        basis_id, bases_ref = core.basis_id, core.bases_ref
        if bases_ref is None:
            raise AdapterLoadFailed(f"{where}: the core does not say where its bases are (metadata 'bases')")
        bases_location, bases_name = location.relative(bases_ref)
        basis = await self._single_flight(
            ("bases", location.source, location.root, basis_id),
            lambda: self._load_basis(source, bases_location, bases_name, basis_id),
        )
        return await asyncio.to_thread(load_core, core, basis, self._shapes, where)

    async def _load_basis(self, source: AdapterSource, location: Location, name: str, basis_id: str) -> LoadedBasis:
        data = await self._read(source, location, name)
        basis = await asyncio.to_thread(load_basis, data, self._shapes, f"{location}/{name}")
        if basis.basis_id != basis_id:
            raise AdapterLoadFailed(f"{location}/{name} holds basis {basis.basis_id}, the core needs {basis_id}")
        return basis
