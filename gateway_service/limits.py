"""Admission limits: per-user token buckets on requests and on generated tokens, and caps on requests in flight
(all users together, and each user alone) that fail fast instead of queueing: without the per-user cap, one
user's burst of slow streams could fill the engine's queue for everyone.

The token bucket is charged after the fact, because a request's generated tokens are known only when it ends:
a user may run into debt, and is refused (with the time until the debt is repaid as Retry-After) until the
bucket is back at zero. So bursts stay bounded by ``user_token_burst`` plus the requests already in flight.

The bucket formula is :func:`refill`, :func:`wait_for` and :func:`full_in`, defined here once. :class:`UserLimiter`
keeps the buckets in this process; :mod:`~gateway_service.shared_limits` keeps them in Redis for every replica
(its Lua script restates the same formula, and a test holds the two to the same answers).

The in-flight caps (:class:`ConcurrencyGate`) stay per process, with Redis or without: they protect this
process's own upstream connection pool and event loop, and a cap across replicas would need a lease per
request (taken and given back around every stream, and lost with the replica that held it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import Overloaded, RateLimited, TooManyInFlight

__all__ = ["ConcurrencyGate", "TokenBucket", "UserLimiter", "full_in", "refill", "refusal", "wait_for"]


def refill(level: float, stamp: float, now: float, rate: float, burst: float) -> float:
    """A bucket's level at ``now``: ``level`` at ``stamp`` plus ``rate`` per second since, never above ``burst``
    (a clock that steps back refills nothing)."""
    return min(burst, level + max(0.0, now - stamp) * rate)


def wait_for(level: float, amount: float, rate: float) -> float:
    """Seconds until a bucket at ``level`` holds ``amount`` (0 when it does now)."""
    return 0.0 if level >= amount else (amount - level) / rate


def full_in(level: float, rate: float, burst: float) -> float:
    """Seconds until a bucket at ``level`` is full again (0 for an unlimited one): after that, forgetting it
    changes nothing."""
    return 0.0 if rate <= 0 or level >= burst else (burst - level) / rate


_WHAT = {"requests": "requests", "tokens": "generated tokens"}


def refusal(limit: str, rate: float, burst: float, wait_s: float) -> RateLimited:
    """The 429 for an empty bucket, ``limit`` being ``requests`` or ``tokens``."""
    return RateLimited(f"rate limit: at most {rate:g} {_WHAT[limit]}/s (burst {burst:g})", wait_s)


@dataclass(slots=True)
class TokenBucket:
    rate: float  # refills per second; 0 means unlimited
    burst: float
    level: float
    stamp: float

    def refill(self, now: float) -> None:
        self.level = refill(self.level, self.stamp, now, self.rate, self.burst)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 when it is now)."""
        return wait_for(self.level, amount, self.rate)


class UserLimiter:
    def __init__(
        self,
        requests_per_s: float,
        request_burst: int,
        tokens_per_s: float,
        token_burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_users: int = 100_000,
        on_limited: Callable[[str], None] = lambda _: None,
    ) -> None:
        self._requests = (requests_per_s, float(request_burst))
        self._tokens = (tokens_per_s, float(token_burst))
        self._clock = clock
        self._max_users = max_users
        self._on_limited = on_limited
        self._users: dict[str, tuple[TokenBucket, TokenBucket]] = {}

    @property
    def rates(self) -> tuple[float, float, float, float]:
        """Requests per second, request burst, tokens per second, token burst."""
        return (*self._requests, *self._tokens)

    def _buckets(self, user_id: str, now: float) -> tuple[TokenBucket, TokenBucket]:
        buckets = self._users.get(user_id)
        if buckets is None:
            if len(self._users) >= self._max_users:
                self._forget_idle(now)
            (rr, rb), (tr, tb) = self._requests, self._tokens
            buckets = self._users[user_id] = (TokenBucket(rr, rb, rb, now), TokenBucket(tr, tb, tb, now))
        return buckets

    def _forget_idle(self, now: float) -> None:
        # A user whose buckets have refilled completely is indistinguishable from one never seen.
        for user_id, (req, tok) in list(self._users.items()):
            req.refill(now)
            tok.refill(now)
            if req.level >= req.burst and tok.level >= tok.burst:
                del self._users[user_id]

    def admit(self, user_id: str) -> None:
        """Take one request from ``user_id``'s bucket, or raise RateLimited."""
        now = self._clock()
        requests, tokens = self._buckets(user_id, now)
        if requests.rate > 0:
            requests.refill(now)
            if requests.level < 1:
                self._on_limited("requests")
                raise refusal("requests", requests.rate, requests.burst, requests.wait_for(1))
        if tokens.rate > 0:
            tokens.refill(now)
            if tokens.level < 0:
                self._on_limited("tokens")
                raise refusal("tokens", tokens.rate, tokens.burst, tokens.wait_for(0))
        if requests.rate > 0:
            requests.level -= 1

    def charge_tokens(self, user_id: str, generated: int) -> None:
        """Charge ``generated`` tokens to ``user_id`` (may go negative; see the module docstring)."""
        if generated <= 0 or self._tokens[0] <= 0:
            return
        now = self._clock()
        _, tokens = self._buckets(user_id, now)
        tokens.refill(now)
        tokens.level -= generated

    def levels(self, user_id: str) -> tuple[float, float]:
        """``user_id``'s request and token levels now (full for a user not seen)."""
        now = self._clock()
        requests, tokens = self._buckets(user_id, now)
        requests.refill(now)
        tokens.refill(now)
        return requests.level, tokens.level


class ConcurrencyGate:
    """At most ``limit`` requests inside at once, and at most ``per_user`` of one user (0: no per-user cap); the
    next one is refused at once: 429 too_many_in_flight for the user's cap, 503 overloaded for the global one."""

    def __init__(self, limit: int, per_user: int = 0) -> None:
        self.limit = limit
        self.per_user = per_user
        self.inside = 0
        self._users: dict[str, int] = {}  # users with requests inside only: bounded by ``limit``

    def enter(self, user_id: str) -> None:
        if self.per_user and self._users.get(user_id, 0) >= self.per_user:
            raise TooManyInFlight(f"at most {self.per_user} requests of one user at once; wait for one to finish")
        if self.inside >= self.limit:
            raise Overloaded(f"the gateway is at its limit of {self.limit} concurrent requests")
        self.inside += 1
        if self.per_user:
            self._users[user_id] = self._users.get(user_id, 0) + 1

    def leave(self, user_id: str) -> None:
        self.inside -= 1
        if self.per_user:
            left = self._users[user_id] - 1
            if left:
                self._users[user_id] = left
            else:
                del self._users[user_id]
