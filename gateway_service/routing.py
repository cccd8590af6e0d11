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

A configured backend with ``"discover": "dns"`` stands for every address its host resolves to (all A/AAAA
records: a Kubernetes headless Service lists one per ready pod), each one backend with the same scheme, port and
kind. The names are resolved before the first round and again at the start of every health-check round; when the
set changes the ring is rebuilt (backends that stay keep their health, in-flight count and model id), so a new
replica needs no configuration and each adapter still has one home. A failed lookup keeps the last answer.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from .errors import NoBackend
from .settings import BackendConfig, BackendKind

__all__ = ["Backend", "BackendPool", "HashRing", "Resolve", "resolve_host"]

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
        self._backends = list(backends)

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


Resolve = Callable[[str], Awaitable[list[str]]]  # host -> its addresses


async def resolve_host(host: str) -> list[str]:
    """Every address of ``host`` (A and AAAA), through the system's resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _at(url: str, address: str) -> str:
    """``url`` with its host replaced by ``address`` (an IPv6 one in brackets), port and path kept."""
    parts = urlsplit(url)
    netloc = f"[{address}]" if ":" in address else address
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class BackendPool:
    def __init__(
        self,
        configs: list[BackendConfig],
        virtual_nodes: int,
        load_factor: float,
        resolve: Resolve = resolve_host,
    ) -> None:
        self._configs = configs
        self._virtual_nodes = virtual_nodes
        self._resolve = resolve
        self._found: dict[int, list[str]] = {}  # per DNS entry (index in configs): its last good answer, as URLs
        # One list object for the pool's life (the metrics read it at scrape time); discovery changes it in place.
        self.backends: list[Backend] = []
        self._load_factor = load_factor
        # Ring walks depend only on the key: remember them (bounded; adapters are few next to requests).
        self._walks: dict[str, list[Backend]] = {}
        self._ring = HashRing([], virtual_nodes)
        self._rebuild()

    def _rebuild(self) -> bool:
        """Make the backends those configured and found; True if the set changed."""
        wanted: dict[str, BackendKind] = {}
        for n, config in enumerate(self._configs):
            urls = self._found.get(n, []) if config.discover == "dns" else [config.url]
            for url in urls:
                wanted.setdefault(url, config.kind)
        if [b.url for b in self.backends] == list(wanted):
            return False
        kept = {b.url: b for b in self.backends}
        self.backends[:] = [kept.get(url) or Backend(url, kind) for url, kind in wanted.items()]
        self._ring = HashRing(self.backends, self._virtual_nodes)
        self._walks.clear()
        return True

    async def discover(self) -> bool:
        """Resolve the ``discover: dns`` entries again; True if the backends changed (the ring is then rebuilt)."""
        entries = [(n, c) for n, c in enumerate(self._configs) if c.discover == "dns"]
        if not entries:
            return False
        answers = await asyncio.gather(*(self._lookup(c.url) for _, c in entries))
        for (n, _), urls in zip(entries, answers, strict=True):
            if urls is not None:
                self._found[n] = urls
        before = [b.url for b in self.backends]
        if not self._rebuild():
            return False
        _log.info("backends found through DNS changed: %s -> %s", before, [b.url for b in self.backends])
        return True

    async def _lookup(self, url: str) -> list[str] | None:
        host = urlsplit(url).hostname or ""
        try:
            addresses = await self._resolve(host)
        except OSError as e:  # socket.gaierror included
            _log.warning("cannot resolve %s (%s); keeping its last answer", host, e)
            return None
        if not addresses:
            _log.warning("%s resolved to no address; keeping its last answer", host)
            return None
        return [_at(url, a) for a in sorted(set(addresses))]  # DNS rotates its answers: the order means nothing

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
        """One round: look the DNS entries up again, then check every backend."""
        await self.discover()
        await asyncio.gather(*(self.check(client, b, timeout_s, fallback_timeout_s) for b in self.backends))

    async def watch(
        self, client: httpx.AsyncClient, interval_s: float, timeout_s: float, fallback_timeout_s: float
    ) -> None:
        """Check every backend every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            await self.check_all(client, timeout_s, fallback_timeout_s)
