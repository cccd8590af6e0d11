"""Which backend serves a request: consistent hashing with bounded load, over the backends that are healthy.

Each backend owns ``virtual_nodes`` points on a 64-bit hash ring. A request for an adapter walks the ring from
the adapter's hash, so every request for one adapter goes to the same backend (its weights stay hot in that
backend's cache) and adding or losing a backend moves only its share of adapters. Bounded load (Mirrokni et
al., "Consistent Hashing with Bounded Loads"): a backend whose in-flight count has reached
``ceil(load_factor * (total + 1) / healthy)`` is passed over for the next one on the ring, so one hot adapter
cannot pile everything onto one backend. The rest of the walk is the failover order.

Health is checked actively (every ``health_interval_s``) and passively (a connection error marks the backend down
at once; the next successful check brings it back). The active check asks ``GET /info``, which LoRAX and the
engine answer without touching the model; only a backend without it (404, 405) is asked ``GET /health``, with
a longer timeout: LoRAX 0.12.1's ``/health`` runs a one-token generation through its batching queue and answers
500 on an overload (router/src/server.rs:464-566), so a busy LoRAX would look down. A backend's ``model_id``
(from ``/info``) is learned on its first good check: the OpenAI routes name the base model by it.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import math
from dataclasses import dataclass

import httpx

from .errors import NoBackend
from .settings import BackendConfig, BackendKind

__all__ = ["Backend", "BackendPool", "HashRing"]

_log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Backend:
    url: str
    kind: BackendKind
    healthy: bool = True
    in_flight: int = 0
    model_id: str | None = None

    def mark_down(self, why: str) -> None:
        if self.healthy:
            _log.warning("backend %s marked down: %s", self.url, why)
        self.healthy = False


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    def __init__(self, backends: list[Backend], virtual_nodes: int) -> None:
        points = sorted((_hash(f"{b.url}#{i}"), n) for n, b in enumerate(backends) for i in range(virtual_nodes))
        self._hashes = [h for h, _ in points]
        self._owners = [n for _, n in points]
        self._backends = backends

    def walk(self, key: str) -> list[Backend]:
        """Every backend once, in ring order from ``key``'s position."""
        start = bisect.bisect(self._hashes, _hash(key))
        seen: list[int] = []
        count = len(self._owners)
        for step in range(count):
            owner = self._owners[(start + step) % count]
            if owner not in seen:
                seen.append(owner)
                if len(seen) == len(self._backends):
                    break
        return [self._backends[n] for n in seen]


class BackendPool:
    def __init__(self, configs: list[BackendConfig], virtual_nodes: int, load_factor: float) -> None:
        self.backends = [Backend(c.url, c.kind) for c in configs]
        self._ring = HashRing(self.backends, virtual_nodes)
        self._load_factor = load_factor
        # Ring walks depend only on the key: remember them (bounded; adapters are few next to requests).
        self._walks: dict[str, list[Backend]] = {}

    def healthy(self) -> list[Backend]:
        return [b for b in self.backends if b.healthy]

    def plan(self, key: str) -> list[Backend]:
        """The healthy backends in the order to try them for ``key``; the first respects the load bound."""
        walk = self._walks.get(key)
        if walk is None:
            if len(self._walks) > 10_000:
                self._walks.clear()
            walk = self._walks[key] = self._ring.walk(key)
        order = [b for b in walk if b.healthy]
        if not order:
            raise NoBackend("no healthy backend")
        total = sum(b.in_flight for b in order)
        bound = math.ceil(self._load_factor * (total + 1) / len(order))
        for i, backend in enumerate(order):
            if backend.in_flight < bound:
                if i:
                    order.insert(0, order.pop(i))
                break
        return order

    async def check(
        self, client: httpx.AsyncClient, backend: Backend, timeout_s: float, fallback_timeout_s: float
    ) -> None:
        """Up when ``GET /info`` answers 200 (``timeout_s``), or, for a backend without /info, ``GET /health``
        does (``fallback_timeout_s``)."""
        try:
            r = await client.get(f"{backend.url}/info", timeout=timeout_s)
            if r.status_code in (404, 405):
                r = await client.get(f"{backend.url}/health", timeout=fallback_timeout_s)
                ok, why = r.status_code == 200, f"health answered {r.status_code}"
            else:
                ok, why = r.status_code == 200, f"info answered {r.status_code}"
                info = r.json() if ok and backend.model_id is None else None
                if isinstance(info, dict) and isinstance(info.get("model_id"), str):
                    backend.model_id = info["model_id"]
        except (httpx.HTTPError, ValueError) as e:
            ok, why = False, f"{type(e).__name__}: {e}"
        if ok and not backend.healthy:
            _log.info("backend %s is healthy", backend.url)
        if ok:
            backend.healthy = True
        else:
            backend.mark_down(why)

    async def check_all(self, client: httpx.AsyncClient, timeout_s: float, fallback_timeout_s: float) -> None:
        await asyncio.gather(*(self.check(client, b, timeout_s, fallback_timeout_s) for b in self.backends))

    async def watch(
        self, client: httpx.AsyncClient, interval_s: float, timeout_s: float, fallback_timeout_s: float
    ) -> None:
        """Check every backend every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            await self.check_all(client, timeout_s, fallback_timeout_s)
