"""The adapter manager: an in-memory LRU of loaded adapters with a byte budget, and single-flight loading.

An entry is keyed by (source, bucket or root, path, format, and the version tag of every file it was built
from), so an object replaced under the same key is a different entry: stale weights are never served. A
location's listing is re-read at most every ``revalidate_s`` seconds (0: on every request).

Concurrent requests for one cold adapter share one load (and so one download). A compressed adapter is its
core (a few KB) plus its cohort's bases, which are loaded once and shared by every core that names the same
``basis_id``. Bases are not LRU entries of their own: they are reference-counted by the cached cores that use
them, counted in the budget once while any cached core holds them, and dropped with the last such core. Bases
still in memory (held by a cached core, a running request or a load under way) are reused, never loaded twice.

Every load failure reaches the caller as an error naming the ``adapter_id`` it asked for and a client-safe
reason; storage paths and error texts are logged here instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from weakref import WeakValueDictionary

from soppu.adapter.archive import CONFIG_NAME, WEIGHTS_NAME
from soppu.compression.model import Mode
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
from .sources import SOURCES, AdapterSource, Location, SourceRules
from .types import AdapterLoadFailed, AdapterRef, AdapterRefused, AdapterSourceKind, EngineError

__all__ = ["AdapterCache", "CacheStats"]

log = logging.getLogger(__name__)
BasisKey = tuple[Any, ...]
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int
    bytes: int
    downloads: int  # files fetched from a source since start
    hits: int
    misses: int
    bases: int = 0  # distinct cohort bases held for the cached cores (their bytes are in ``bytes``, once)


def _basis_key(basis_id: str, mode: Mode) -> BasisKey:
    # The basis_id is the SHA-256 of the bases' tensors (checked on read): equal ids are equal bases, wherever
    # they were read from.
    return ("bases", basis_id, mode)


@dataclass(slots=True)
class _Entry:
    value: LoadedLora | LoadedCore
    nbytes: int  # the adapter's own bytes (a core's, without its bases)
    basis: BasisKey | None = None  # the bases a core holds a reference on


@dataclass(slots=True)
class _HeldBasis:
    value: LoadedBasis
    users: int  # cached cores on it; at 0 it is dropped


class AdapterCache:
    def __init__(
        self,
        shapes: ModelShapes,
        *,
        budget_bytes: int,
        revalidate_s: float = 1.0,
        rules: SourceRules | None = None,
    ) -> None:
        self._shapes = shapes
        self._budget = budget_bytes
        self._revalidate_s = revalidate_s
        rules = rules or SourceRules()
        self._sources: dict[AdapterSourceKind, AdapterSource] = {kind: new(rules) for kind, new in SOURCES.items()}
        self._entries: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
        self._bases: dict[BasisKey, _HeldBasis] = {}
        # Every basis still in memory, held by a cached core, a running request or a core being loaded: a core
        # whose bases are here never loads them again, even before the first core on them is cached.
        self._alive: WeakValueDictionary[BasisKey, LoadedBasis] = WeakValueDictionary()
        # Loads under way, whose results are shared with whoever asks meanwhile: adapters, and bases.
        self._inflight: dict[tuple[Any, ...], asyncio.Future[LoadedLora | LoadedCore]] = {}
        self._inflight_bases: dict[BasisKey, asyncio.Future[LoadedBasis]] = {}
        self._listings: dict[Location, tuple[float, dict[str, str]]] = {}
        self._bytes = 0
        self._downloads = self._hits = self._misses = 0

    @property
    def stats(self) -> CacheStats:
        entries, bases = len(self._entries), len(self._bases)
        return CacheStats(entries, self._bytes, self._downloads, self._hits, self._misses, bases)

    async def get(self, ref: AdapterRef) -> LoadedLora | LoadedCore:
        """The loaded adapter ``ref`` names. AdapterRefused if this engine may not read it, AdapterLoadFailed if
        it is missing or invalid; either names ``ref.adapter_id`` and nothing else of the storage."""
        try:
            return await self._get(ref)
        except AdapterRefused as e:
            log.warning("adapter %r (%s) refused: %s", ref.adapter_id, ref.source.value, e.message)
            raise AdapterRefused(f"adapter {ref.adapter_id!r} is refused: {e.message}") from e
        except AdapterLoadFailed as e:
            log.warning("adapter %r (%s) failed to load: %s", ref.adapter_id, ref.source.value, e.detail or e.message)
            raise AdapterLoadFailed(f"adapter {ref.adapter_id!r} could not be loaded: {e.message}") from e
        except EngineError:
            raise
        except Exception as e:  # a bug or an unwrapped library error: its text may hold paths, so log it only
            log.exception("adapter %r (%s) failed to load", ref.adapter_id, ref.source.value)
            raise AdapterLoadFailed(f"adapter {ref.adapter_id!r} could not be loaded") from e

    async def _get(self, ref: AdapterRef) -> LoadedLora | LoadedCore:
        source = self._sources[ref.source]
        location = source.locate(ref.adapter_id)
        files = await self._listing(source, location)
        kind = "soppu-core" if location.only else detect_format(set(files), "its location")
        key = (ref.source, location, kind, tuple(sorted(files.items())))
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self._hits += 1
            return entry.value

        async def load() -> LoadedLora | LoadedCore:
            return self._insert(key, await self._load(source, location, kind, files))

        return await self._single_flight(self._inflight, key, load)

    # --- internals -------------------------------------------------------------------------------------

    async def _listing(self, source: AdapterSource, location: Location) -> dict[str, str]:
        cached = self._listings.get(location)
        if cached is not None and time.monotonic() - cached[0] < self._revalidate_s:
            return cached[1]
        files = await asyncio.to_thread(source.listing, location)
        if not files:
            raise AdapterLoadFailed("no adapter was found there", detail=f"{location} holds no files")
        if len(self._listings) > 4096:  # bounded: listings are cheap to redo
            self._listings.clear()
        self._listings[location] = (time.monotonic(), files)
        return files

    async def _single_flight(
        self,
        inflight: dict[tuple[Any, ...], asyncio.Future[_V]],
        key: tuple[Any, ...],
        load: Callable[[], Awaitable[_V]],
    ) -> _V:
        """One ``load`` per ``key`` at a time (``inflight`` holds those under way), its result shared with whoever
        asks meanwhile. An adapter's load keeps it as an LRU entry (:meth:`_insert`); bases are not entries:
        :meth:`_hold` keeps them for as long as a cached core uses them."""
        if key in inflight:
            self._hits += 1
            return await asyncio.shield(inflight[key])
        self._misses += 1
        future: asyncio.Future[_V] = asyncio.get_running_loop().create_future()
        inflight[key] = future
        try:
            value = await load()
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved here, so an unawaited failure is not logged as lost
            raise
        finally:
            del inflight[key]
        future.set_result(value)
        return value

    def _insert(self, key: tuple[Any, ...], value: LoadedLora | LoadedCore) -> LoadedLora | LoadedCore:
        """Keep ``value``, evicting as the budget needs; returns what is kept (a core put on the held bases)."""
        basis = None
        if isinstance(value, LoadedCore):
            basis = self._hold(value.basis)
            held = self._bases[basis].value
            if held is not value.basis:  # a copy loaded while the held one was out of reach: keep one
                value = dataclasses.replace(value, basis=held)
        self._entries[key] = _Entry(value, value.nbytes, basis)
        self._bytes += value.nbytes
        # Evict least recently used entries, never the one just loaded. Evicted adapters that running requests
        # still hold stay alive until those finish; only the cache forgets them.
        while self._bytes > self._budget and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes
            if evicted.basis is not None:
                self._release(evicted.basis)
        return value

    def _hold(self, basis: LoadedBasis) -> BasisKey:
        key = _basis_key(basis.basis_id, basis.mode)
        held = self._bases.get(key)
        if held is None:
            self._bases[key] = _HeldBasis(basis, 1)
            self._bytes += basis.nbytes  # counted once, however many cores share it
        else:
            held.users += 1
        return key

    def _release(self, key: BasisKey) -> None:
        held = self._bases[key]
        held.users -= 1
        if held.users == 0:
            del self._bases[key]
            self._bytes -= held.value.nbytes

    async def _read(self, source: AdapterSource, location: Location, name: str) -> bytes:
        self._downloads += 1
        return await asyncio.to_thread(source.read, location, name)

    async def _load(
        self, source: AdapterSource, location: Location, kind: str, files: dict[str, str]
    ) -> LoadedLora | LoadedCore:
        if kind == "peft":
            data = {name: await self._read(source, location, name) for name in (CONFIG_NAME, WEIGHTS_NAME)}
            return await asyncio.to_thread(load_lora, data, self._shapes, "PEFT files")
        core_name = location.only or CORE_NAME
        core_data = await self._read(source, location, core_name)
        core = await asyncio.to_thread(parse_core, core_data, "core")
        basis_id, bases_ref = core.basis_id, core.bases_ref
        if bases_ref is None:
            raise AdapterLoadFailed("the core does not say where its bases are (metadata 'bases')")
        key = _basis_key(basis_id, core.meta.mode)
        basis = self._alive.get(key)
        if basis is None:  # nothing holds these bases: load them (once, however many cores ask at a time)
            bases_location, bases_name = location.relative(bases_ref)
            basis = await self._single_flight(
                self._inflight_bases, key, lambda: self._load_basis(source, bases_location, bases_name, basis_id)
            )
            self._alive[key] = basis
        return await asyncio.to_thread(load_core, core, basis, self._shapes, "core")

    async def _load_basis(self, source: AdapterSource, location: Location, name: str, basis_id: str) -> LoadedBasis:
        data = await self._read(source, location, name)
        basis = await asyncio.to_thread(load_basis, data, self._shapes, "bases")
        if basis.basis_id != basis_id:
            raise AdapterLoadFailed(
                f"its bases hold basis {basis.basis_id}, the core needs {basis_id}", detail=f"{location}/{name}"
            )
        return basis
