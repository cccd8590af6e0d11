"""The gateway's parts wired together (:class:`Gateway`, one per app, on ``app.state``) and the decisions every
route shares: who a request acts for, whether it is admitted, and which adapter it is served with.

A ``user`` key acts for its own user only (a ``user_id`` naming anyone else is 403); ``service`` and ``admin``
keys must name the user. The ``no_adapter`` policy applies to the ``default`` adapter: a user without one gets
the base model (``base``) or 404 (``404``); a missing adapter asked for by any other name is always 404,
because silently answering with the base model would hide a typo.

With ``redis_url`` set, per-user limits are kept in Redis for every replica
(:mod:`~gateway_service.shared_limits`) and invalidations arrive by pub/sub too
(:mod:`~gateway_service.invalidation`); :meth:`Gateway.start` and :meth:`Gateway.aclose` run and stop that
background work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from soppu.auth import Principal, Role
from soppu.errors import InvalidName, StoreUnavailable
from soppu.protocol.invalidation import Invalidation
from soppu.store.base import ObjectStore
from soppu.store.layout import check_name, parse_pointer_key, pointers_prefix

from .errors import AdapterNotFound, Forbidden, InvalidRequest, StoreDown
from .invalidation import follow
from .keys import KeyCache
from .limits import ConcurrencyGate, UserLimiter
from .metrics import GatewayMetrics
from .resolution import AdapterTarget, Resolution, Resolver
from .routing import BackendPool
from .settings import BackendKind, GatewaySettings
from .shared_limits import SharedLimiter, connect, where
from .upstream import Upstream

__all__ = ["DEFAULT_ADAPTER", "Call", "Gateway", "Target"]

DEFAULT_ADAPTER = "default"
_log = logging.getLogger(__name__)


def valid_name(value: str, field: str) -> str:
    try:
        return check_name(value, field)
    except InvalidName as e:
        raise InvalidRequest(f"`{field}`={value!r}: {e.message}") from None


@dataclass(frozen=True, slots=True)
class Target:
    """What a request is served with: a resolved adapter version, or the base model (``resolution`` None)."""

    user_id: str
    adapter: str
    resolution: Resolution | None

    @property
    def affinity(self) -> str:
        return self.resolution.affinity if self.resolution else "<base>"

    def for_kind(self, kind: BackendKind) -> AdapterTarget | None:
        return self.resolution.targets[kind] if self.resolution else None

    def response_headers(self) -> dict[str, str]:
        if self.resolution is None:
            return {"x-adapter-source": "base"}
        return {"x-adapter-id": self.adapter, "x-adapter-version": str(self.resolution.version)}


@dataclass(slots=True)
class Call:
    """One request as the routes see it: the gateway, who is calling, and what to forward upstream."""

    gateway: Gateway
    principal: Principal
    state: dict[str, Any]  # the ASGI scope's state: request id, start time; routes add backend and user for logs
    upstream_headers: dict[str, str]

    @property
    def started(self) -> float:
        started: float = self.state["started"]
        return started


class Gateway:
    def __init__(
        self,
        settings: GatewaySettings,
        store: ObjectStore,
        transport: httpx.AsyncBaseTransport,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        admin_key = settings.admin_key.get_secret_value() if settings.admin_key else None
        self.keys = KeyCache(store, admin_key, settings.key_cache_ttl_s)
        self.resolver = Resolver(store, settings.resolution_ttl_s, lambda r: metrics.lookups.labels(result=r).inc())
        self.pool = BackendPool(settings.backends, settings.virtual_nodes, settings.load_factor)

        def on_limited(limit: str) -> None:
            metrics.limited.labels(limit=limit).inc()

        local = UserLimiter(
            settings.user_requests_per_s,
            settings.user_request_burst,
            settings.user_tokens_per_s,
            settings.user_token_burst,
            on_limited=on_limited,
        )
        redis_url = settings.redis_url.get_secret_value()
        self._address = where(redis_url) if redis_url else "-"
        # No I/O here: the client connects on its first call.
        self.redis = connect(redis_url, settings.redis_timeout_s, settings.redis_pool_size) if redis_url else None
        self.limiter = SharedLimiter(
            local,
            self.redis,
            address=self._address,
            retry_s=settings.redis_retry_s,
            on_limited=on_limited,
            on_error=lambda operation: metrics.redis_errors.labels(operation=operation).inc(),
            on_shared=lambda shared: metrics.limits_shared.set(float(shared)),
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.gate = ConcurrencyGate(settings.max_concurrent_requests, settings.user_max_in_flight)
        timeout = httpx.Timeout(settings.upstream_timeout_s, connect=settings.connect_timeout_s)
        self.upstream = Upstream(transport, timeout, settings.retries, settings.retry_backoff_s, metrics)
        metrics.watch(self.pool.backends, lambda: self.gate.inside)

    async def start(self) -> None:
        """With Redis: the limiter's recovery probe and the invalidation subscriber, as background tasks."""
        if self.redis is None:
            return
        retry_s = self.settings.redis_retry_s
        self._tasks = [
            asyncio.create_task(self.limiter.watch()),
            asyncio.create_task(
                follow(
                    self.redis,
                    self._apply,
                    address=self._address,
                    retry_s=retry_s,
                    on_error=lambda operation: self.metrics.redis_errors.labels(operation=operation).inc(),
                )
            ),
        ]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.limiter.aclose()

    def invalidate(
        self, user_id: str | None = None, key_id: str | None = None, *, source: str = "http"
    ) -> tuple[int, int]:
        """Drop the cached resolutions and keys of ``user_id`` and/or the key ``key_id`` (everything when both are
        None); how many of each."""
        user_id = valid_name(user_id, "user_id") if user_id is not None else None
        key_id = valid_name(key_id, "key_id") if key_id is not None else None
        everything = user_id is None and key_id is None
        resolutions = self.resolver.invalidate(user_id) if user_id is not None or everything else 0
        keys = self.keys.invalidate(user_id=user_id, key_id=key_id)
        self.metrics.invalidations.labels(source=source).inc()
        return resolutions, keys

    def _apply(self, message: Invalidation | None, source: str) -> None:
        try:
            if message is None:
                self.invalidate(source=source)
            else:
                self.invalidate(message.user_id, message.key_id, source=source)
        except InvalidRequest as e:
            _log.warning("ignored an invalidation from %s: %s", source, e.message)

    def acting_user(self, principal: Principal, named: str | None) -> str:
        if principal.role is Role.USER:
            if named is not None and named != principal.user_id:
                raise Forbidden("a user key acts for its own user only")
            assert principal.user_id is not None  # a user key always names its user
            return principal.user_id
        if not named:
            raise InvalidRequest(f"`user_id` is required with a {principal.role.value} key")
        return valid_name(named, "user_id")

    async def target(self, user_id: str, adapter: str | None) -> Target:
        name = valid_name(adapter or DEFAULT_ADAPTER, "adapter")
        resolution = await self.resolver.resolve(user_id, name)
        if resolution is None:
            if name == DEFAULT_ADAPTER and self.settings.no_adapter == "base":
                return Target(user_id, name, None)
            raise AdapterNotFound(f"no adapter {name!r} for this user")
        return Target(user_id, name, resolution)

    async def refresh(self, target: Target) -> Target | None:
        """``target`` re-resolved past the cache, if it now names another version (else None)."""
        self.resolver.invalidate(target.user_id)
        fresh = await self.target(target.user_id, target.adapter)
        old, new = target.resolution, fresh.resolution
        return fresh if new is not None and (old is None or new.version != old.version) else None

    def max_new_tokens(self, asked: int | None) -> int:
        """The default when unset; clamped to the cap (a longer ask ends with finish_reason ``length``)."""
        return min(asked or self.settings.default_max_new_tokens, self.settings.max_new_tokens_cap)

    async def adapter_names(self, user_id: str) -> list[str]:
        # Every published adapter has a pointer; the layout names where they live and parses their keys.
        prefix = pointers_prefix(user_id)
        try:
            infos = await asyncio.to_thread(lambda: list(self.store.list(prefix)))
        except StoreUnavailable as e:
            raise StoreDown(f"cannot list adapters: {e.message}") from e
        owners = (parse_pointer_key(info.key) for info in infos)
        return sorted({adapter for user, adapter in filter(None, owners) if user == user_id})

    async def store_ready(self) -> bool:
        try:
            await asyncio.to_thread(self.store.check)
        except StoreUnavailable:
            return False
        return True
