"""What the gateway's two caches (keys, resolutions) share: a TTL map whose every invalidation bumps an epoch
so that a store read begun before it can never write its (possibly stale) answer back, and single-flight
loading so a burst of requests for one cold entry makes one store read, not hundreds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Entry", "TtlCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(slots=True)
class Entry(Generic[V]):
    value: V
    checked: float  # monotonic time of the store read (or revalidation) that vouches for value
    etag: str | None = None


class TtlCache(Generic[K, V]):
    """A bounded map of entries trusted for ``ttl_s``; ``load`` runs at most once at a time per key."""

    def __init__(self, ttl_s: float, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: dict[K, Entry[V]] = {}
        self._loading: dict[K, asyncio.Task[Entry[V]]] = {}
        self._epoch = 0

    def now(self) -> float:
        return self._clock()

    def fresh(self, key: K) -> Entry[V] | None:
        """The entry if it is still within its TTL."""
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry.checked < self.ttl_s:
            return entry
        return None

    def stale(self, key: K) -> Entry[V] | None:
        """The entry whatever its age (for ETag revalidation)."""
        return self._entries.get(key)

    async def load(self, key: K, loader: Callable[[], Awaitable[Entry[V]]]) -> Entry[V]:
        task = self._loading.get(key)
        if task is None:
            task = asyncio.create_task(self._run(key, loader, self._epoch))
            self._loading[key] = task
        # Shielded: one waiter's cancellation (its client hung up) must not cancel the others' load.
        return await asyncio.shield(task)

    async def _run(self, key: K, loader: Callable[[], Awaitable[Entry[V]]], epoch: int) -> Entry[V]:
        try:
            entry = await loader()
            if epoch == self._epoch:  # else an invalidation happened meanwhile: answer, but do not keep
                self._put(key, entry)
            return entry
        finally:
            if self._loading.get(key) is asyncio.current_task():
                del self._loading[key]

    def _put(self, key: K, entry: Entry[V]) -> None:
        self._entries.pop(key, None)  # re-insert at the end: the dict's order is then oldest-checked first
        self._entries[key] = entry
        while len(self._entries) > self._max:
            del self._entries[next(iter(self._entries))]

    def invalidate(self, match: Callable[[K, V], bool] | None = None) -> int:
        """Drop the entries ``match`` selects (all when None); in-flight loads will not be kept either."""
        self._epoch += 1
        # New requests must start a fresh read rather than join one that began before the invalidation.
        self._loading.clear()
        if match is None:
            dropped = len(self._entries)
            self._entries.clear()
            return dropped
        doomed = [k for k, e in self._entries.items() if match(k, e.value)]
        for k in doomed:
            del self._entries[k]
        return len(doomed)

    def __len__(self) -> int:
        return len(self._entries)
