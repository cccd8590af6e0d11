"""Per-user limits shared by every gateway replica: the token buckets of :mod:`~gateway_service.limits` kept in
Redis (``SOPPU_GATEWAY_REDIS_URL``), so N replicas allow a user what one would, not N times as much.

Each operation is one atomic Lua script, one round trip: ``admit`` (refill both buckets, refuse or take one
request) and ``charge`` (take the generated tokens, into debt if need be). The clock is Redis's own (``TIME``
inside the script), so the replicas' clocks never matter. A user's hash ``soppu:limits:{user}`` expires
(``PEXPIRE``) once both buckets would be full again: an idle user costs nothing, and a forgotten user is the same
as a full one. The charge runs in a task of its own: the response never waits for it.

A Redis outage degrades, never fails a request: on any Redis error or timeout the call is answered by this
process's own :class:`~gateway_service.limits.UserLimiter`, the limiter says so (``shared`` False, the gauge
``soppu_gateway_limits_shared`` 0, one log line per transition) and tries Redis again after ``retry_s``, on
the next call or from :meth:`SharedLimiter.watch`, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .limits import UserLimiter, refusal

__all__ = ["OUTAGE", "SharedLimiter", "admit_script", "bucket_key", "charge_script", "connect", "where"]

_log = logging.getLogger(__name__)

# What a Redis outage raises: the client's own errors (connection, timeout, a full pool), and the OS's.
OUTAGE = (RedisError, OSError, asyncio.TimeoutError)


def bucket_key(user_id: str) -> str:
    return f"soppu:limits:{user_id}"


# The formula of gateway_service.limits (refill, wait_for, full_in) restated in Lua: Redis runs Lua, not Python.
# tests/gateway_service/test_gateway_shared_limits.py runs both on the same operations and compares the answers.
# ARGV: requests/s, request burst, tokens/s, token burst (, tokens to charge). Levels are kept as %.17g strings,
# which give back the same double.
_PRELUDE = """
local now = {clock}
local rr, rb, tr, tb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local held = redis.call('HMGET', KEYS[1], 'r', 't', 's')
local stamp = tonumber(held[3]) or now
local function refill(level, rate, burst)
  return math.min(burst, level + math.max(0, now - stamp) * rate)
end
local function full_in(level, rate, burst)
  if rate <= 0 or level >= burst then return 0 end
  return (burst - level) / rate
end
local r = tonumber(held[1]) or rb
local t = tonumber(held[2]) or tb
if rr > 0 then r = refill(r, rr, rb) end
if tr > 0 then t = refill(t, tr, tb) end
"""
_ADMIT = """
if rr > 0 and r < 1 then return {'requests', string.format('%.17g', (1 - r) / rr)} end
if tr > 0 and t < 0 then return {'tokens', string.format('%.17g', (0 - t) / tr)} end
if rr > 0 then r = r - 1 end
"""
_CHARGE = """
t = t - tonumber(ARGV[5])
"""
_KEEP = """
local full = math.max(full_in(r, rr, rb), full_in(t, tr, tb))
if full <= 0 then
  redis.call('DEL', KEYS[1])  -- full buckets: the same as a user never seen
  return {}
end
local f = '%.17g'
redis.call('HSET', KEYS[1], 'r', string.format(f, r), 't', string.format(f, t), 's', string.format(f, now))
redis.call('PEXPIRE', KEYS[1], math.floor(full * 1000) + 1)
return {}
"""
# Redis's clock, in seconds; a test passes its own as the last argument instead.
SERVER_CLOCK = "(function() local t = redis.call('TIME'); return tonumber(t[1]) + tonumber(t[2]) / 1000000 end)()"
ARGV_CLOCK = "tonumber(ARGV[#ARGV])"


def admit_script(clock: str = SERVER_CLOCK) -> str:
    return _PRELUDE.replace("{clock}", clock) + _ADMIT + _KEEP


def charge_script(clock: str = SERVER_CLOCK) -> str:
    return _PRELUDE.replace("{clock}", clock) + _CHARGE + _KEEP


def connect(url: str, timeout_s: float, pool_size: int) -> Redis:
    """A client on a small pool with short timeouts: a slow Redis is an outage, and the caller falls back at once.
    One retry, on a fresh connection, after a connection error: a connection idle in the pool while Redis
    restarted is dead, and without it the first calls after a restart would fail over to local limits."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=pool_size,
        timeout=timeout_s,  # waiting for a free connection counts as an outage too
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),
        decode_responses=True,
    )
    return Redis.from_pool(pool)  # from_pool: closing the client closes its pool


def where(url: str) -> str:
    """``host:port`` of a Redis URL, for logs: the URL itself may carry a password."""
    parts = urlsplit(url)
    return parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"


class SharedLimiter:
    """Per-user buckets in Redis when ``redis`` is given and answers; this process's ``local`` ones otherwise."""

    def __init__(
        self,
        local: UserLimiter,
        redis: Redis | None,
        *,
        address: str = "redis",
        retry_s: float = 1.0,
        on_limited: Callable[[str], None] = lambda _: None,
        on_error: Callable[[str], None] = lambda _: None,
        on_shared: Callable[[bool], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._local = local
        self._redis = redis
        self._rates = local.rates
        self._args = [repr(float(x)) for x in self._rates]
        self._address = address
        self._retry_s = retry_s
        self._on_limited = on_limited
        self._on_error = on_error
        self._on_shared = on_shared
        self._clock = clock
        self._down = False
        self._retry_at = 0.0
        self._charges: set[asyncio.Task[None]] = set()
        if redis is not None:
            self._admit = redis.register_script(admit_script())
            self._charge = redis.register_script(charge_script())
        on_shared(redis is not None)

    @property
    def shared(self) -> bool:
        """Whether the limits are shared now (Redis configured and answering)."""
        return self._redis is not None and not self._down

    @property
    def redis_up(self) -> bool | None:
        """None without Redis; else whether it answered last time."""
        return None if self._redis is None else not self._down

    def _try_redis(self) -> bool:
        if self._redis is None:
            return False
        if not self._down:
            return True
        now = self._clock()
        if now < self._retry_at:
            return False
        self._retry_at = now + self._retry_s  # one probe per backoff, not one per request
        return True

    def _lost(self, operation: str, e: BaseException) -> None:
        self._on_error(operation)
        self._retry_at = self._clock() + self._retry_s
        if not self._down:
            self._down = True
            self._on_shared(False)
            _log.warning(
                "redis at %s failed (%s on %s): per-user limits are this replica's own until it answers",
                self._address,
                type(e).__name__,
                operation,
            )

    def _answered(self) -> None:
        if self._down:
            self._down = False
            self._on_shared(True)
            _log.info("redis at %s answers again: per-user limits are shared", self._address)

    async def admit(self, user_id: str) -> None:
        """Take one request from ``user_id``'s bucket, or raise RateLimited."""
        if not self._try_redis():
            return self._local.admit(user_id)
        try:
            refused = await self._admit(keys=[bucket_key(user_id)], args=self._args)
        except OUTAGE as e:
            self._lost("admit", e)
            return self._local.admit(user_id)
        self._answered()
        if refused:
            limit, wait = refused[0], float(refused[1])
            self._on_limited(limit)
            rate, burst = (self._rates[0], self._rates[1]) if limit == "requests" else (self._rates[2], self._rates[3])
            raise refusal(limit, rate, burst, wait)
        return None

    def charge_tokens(self, user_id: str, generated: int) -> None:
        """Charge ``generated`` tokens to ``user_id`` (may go into debt), in a task: nobody waits for it."""
        if generated <= 0 or self._rates[2] <= 0:
            return
        if not self._try_redis():
            self._local.charge_tokens(user_id, generated)
            return
        task = asyncio.create_task(self._charge_shared(user_id, generated))
        self._charges.add(task)
        task.add_done_callback(self._charges.discard)

    async def _charge_shared(self, user_id: str, generated: int) -> None:
        try:
            await self._charge(keys=[bucket_key(user_id)], args=[*self._args, str(generated)])
        except OUTAGE as e:
            self._lost("charge", e)
            self._local.charge_tokens(user_id, generated)
        else:
            self._answered()

    async def watch(self) -> None:
        """While Redis is down, ask it every ``retry_s`` whether it is back (so readiness and the gauge follow it
        without traffic); until cancelled."""
        if self._redis is None:
            return
        while True:
            await asyncio.sleep(self._retry_s)
            if self._down and self._try_redis():
                try:
                    await self._redis.ping()
                except OUTAGE as e:
                    self._lost("ping", e)
                else:
                    self._answered()

    async def aclose(self) -> None:
        """Wait for the charges under way, then close the connections."""
        if self._charges:
            await asyncio.gather(*self._charges, return_exceptions=True)
        if self._redis is not None:
            with contextlib.suppress(*OUTAGE):
                await self._redis.aclose()
