"""Invalidations over Redis pub/sub: every gateway replica with ``SOPPU_GATEWAY_REDIS_URL`` subscribes to
:data:`soppu.protocol.invalidation.CHANNEL`, where the compressor publishes a deleted user or a revoked key, and
drops what it cached about them, as ``POST /v1/admin/invalidate`` does on the one replica it reaches.

Pub/sub keeps nothing for a subscriber that is away: so every (re)subscription drops every cached resolution and
key, since a message may have been missed meanwhile. After a lost connection the subscriber tries again every
``retry_s``. The caches' short TTL with ETag revalidation stays the safety net beneath both paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import cast

from redis.asyncio import Redis

from soppu.protocol.invalidation import CHANNEL, Invalidation

from .shared_limits import OUTAGE

__all__ = ["follow"]

_log = logging.getLogger(__name__)
_POLL_S = 1.0  # how long one read waits for a message before looping (the task stays cancellable either way)


async def follow(
    redis: Redis,
    apply: Callable[[Invalidation | None, str], None],
    *,
    address: str = "redis",
    retry_s: float = 1.0,
    on_error: Callable[[str], None] = lambda _: None,
) -> None:
    """Apply each message on the channel (``apply(message, "pubsub")``), and ``apply(None, "subscribed")`` (drop
    everything) on each subscription; until cancelled."""
    subscribed: bool | None = None  # None: never yet
    while True:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(CHANNEL)
            apply(None, "subscribed")
            if subscribed is False:
                _log.info("subscribed again to %s on redis at %s; cached keys and resolutions dropped",
                             CHANNEL, address)  # fmt: skip
            subscribed = True
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_POLL_S)
                if message is not None and message.get("type") == "message":
                    _apply_one(message["data"], apply)
        except OUTAGE as e:
            on_error("subscribe")
            if subscribed is not False:
                _log.warning("not subscribed to %s on redis at %s (%s); trying again every %g s",
                             CHANNEL, address, type(e).__name__, retry_s)  # fmt: skip
            subscribed = False
        finally:
            with contextlib.suppress(*OUTAGE):  # the cast: redis-py leaves PubSub.aclose unannotated
                await cast("Callable[[], Awaitable[None]]", pubsub.aclose)()
        await asyncio.sleep(retry_s)


def _apply_one(data: str | bytes, apply: Callable[[Invalidation | None, str], None]) -> None:
    try:
        message = Invalidation.from_json(data)
    except ValueError as e:
        _log.warning("ignored a malformed message on %s: %s", CHANNEL, e)
        return
    if message.user_id is None and message.key_id is None:
        apply(None, "pubsub")
    else:
        apply(message, "pubsub")
