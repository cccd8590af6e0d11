"""The shared limiter against a real redis-server, in-process: its Lua scripts give the same answers as the
in-process buckets on the same operations at the same times (the formula is written twice, in Python and in
Lua), a user's key expires once the buckets would be full, and an outage falls back to the local buckets and
recovers, without a password reaching the log."""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path

import pytest

from gateway_service.errors import RateLimited
from gateway_service.limits import UserLimiter, full_in, refill, refusal
from gateway_service.settings import GatewaySettings
from gateway_service.shared_limits import (
    ARGV_CLOCK,
    SharedLimiter,
    admit_script,
    bucket_key,
    charge_script,
    connect,
    where,
)
from tests.support.redis_server import RedisServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# (time, operation, user, tokens): the same sequence for both. "admit" or "charge".
_SEQUENCE = [
    (0.0, "admit", "a", 0),
    (0.0, "admit", "a", 0),
    (0.0, "admit", "a", 0),
    (0.0, "admit", "a", 0),  # the request burst (3) is spent
    (0.1, "admit", "b", 0),
    (0.5, "admit", "a", 0),  # one request refilled
    (0.5, "charge", "c", 45),  # 20 - 45: in debt
    (0.7, "admit", "c", 0),
    (2.0, "admit", "c", 0),  # -25 + 10 * 1.5 = -10: 1 s more
    (2.0, "charge", "c", 3),
    (3.25, "admit", "c", 0),
    (3.5, "admit", "c", 0),
    (3.5, "charge", "a", 7),
    (9.0, "admit", "a", 0),  # both buckets long full again
    (9.0, "charge", "a", 100),
    (9.05, "admit", "a", 0),
]


def _local(limiter: UserLimiter, op: str, user: str, tokens: int) -> tuple[str, str] | None:
    try:
        limiter.admit(user) if op == "admit" else limiter.charge_tokens(user, tokens)
    except RateLimited as e:
        return e.message, e.headers["Retry-After"]
    return None


@pytest.mark.parametrize("rates", [(2, 3, 10, 20), (0, 1, 10, 20), (2, 3, 0, 1), (0.5, 2, 4, 8)])
def test_the_lua_scripts_and_the_python_buckets_agree(redis_server: RedisServer, rates: tuple[float, ...]) -> None:
    clock = FakeClock()
    local = UserLimiter(*rates, clock=clock)  # type: ignore[arg-type]
    rr, rb, tr, tb = (float(x) for x in rates)
    args = [repr(x) for x in (rr, rb, tr, tb)]
    with redis_server.client() as r:
        r.flushall()
        admit, charge = r.register_script(admit_script(ARGV_CLOCK)), r.register_script(charge_script(ARGV_CLOCK))
        for now, op, user, tokens in _SEQUENCE:
            clock.now = now
            expected = _local(local, op, user, tokens)
            if op == "admit":
                answer = admit(keys=[bucket_key(user)], args=[*args, repr(now)])
                got = None
                if answer:
                    limit, wait = answer[0], float(answer[1])
                    rate, burst = (rr, rb) if limit == "requests" else (tr, tb)
                    refused = refusal(limit, rate, burst, wait)
                    got = (refused.message, refused.headers["Retry-After"])
            else:
                got = None
                if tokens > 0 and tr > 0:  # as UserLimiter.charge_tokens: nothing to charge otherwise
                    charge(keys=[bucket_key(user)], args=[*args, str(tokens), repr(now)])
            assert got == expected, (now, op, user)
            # And the levels: Redis's as stored, refilled to now by the Python formula, against the local ones.
            held = r.hmget(bucket_key(user), "r", "t", "s")
            if held[2] is not None:
                stamp = float(held[2])
                shared = (refill(float(held[0]), stamp, now, rr, rb), refill(float(held[1]), stamp, now, tr, tb))
                assert shared == pytest.approx(local.levels(user), abs=1e-9), (now, op, user)
                # The key lives until both buckets would be full again, and no longer.
                until_full = max(full_in(float(held[0]), rr, rb), full_in(float(held[1]), tr, tb))
                assert 0 < r.pttl(bucket_key(user)) <= math.floor(until_full * 1000) + 1
            else:  # no key: the user is owed nothing, as full local buckets say
                assert local.levels(user) == pytest.approx((rb, tb))


def test_redis_time_drives_the_shared_buckets(redis_server: RedisServer) -> None:
    """The production scripts (Redis's own clock) on a burst; a user's key expires with a TTL bounded by the
    time its buckets take to refill."""

    async def run() -> None:
        redis = connect(redis_server.url, 2.0, 4)
        limiter = SharedLimiter(UserLimiter(0.001, 3, 0.001, 20), redis)
        for _ in range(3):
            await limiter.admit("a")
        with pytest.raises(RateLimited) as refused:
            await limiter.admit("a")
        assert "requests" in refused.value.message and int(refused.value.headers["Retry-After"]) >= 1
        limiter.charge_tokens("b", 25)
        await limiter.aclose()  # waits for the charge
        redis = connect(redis_server.url, 2.0, 4)
        limiter = SharedLimiter(UserLimiter(0.001, 3, 0.001, 20), redis)
        with pytest.raises(RateLimited) as refused:
            await limiter.admit("b")  # another limiter (replica) sees b's debt
        assert "tokens" in refused.value.message
        assert limiter.shared
        await limiter.aclose()

    asyncio.run(run())
    with redis_server.client() as r:
        assert 0 < r.pttl(bucket_key("a")) <= 3 / 0.001 * 1000 + 1


def test_an_outage_falls_back_to_local_buckets_and_recovers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = RedisServer(tmp_path / "redis.log", password="pw-not-in-logs-7f3a").start()
    clock = FakeClock()
    states: list[bool] = []
    errors: list[str] = []

    async def run() -> None:
        redis = connect(secret.url, 2.0, 4)
        limiter = SharedLimiter(
            UserLimiter(0.001, 2, 0.001, 20), redis, retry_s=1.0, clock=clock,
            on_error=errors.append, on_shared=states.append,
        )  # fmt: skip
        await limiter.admit("a")  # shared: a has 1 left in Redis
        assert (limiter.shared, limiter.redis_up) == (True, True)
        secret.kill()
        await limiter.admit("a")  # Redis fails: answered by the local bucket (2 of its own)
        assert (limiter.shared, limiter.redis_up) == (False, False)
        await limiter.admit("a")
        with pytest.raises(RateLimited):
            await limiter.admit("a")  # the local bucket holds too, within the backoff
        limiter.charge_tokens("a", 5)  # charged locally: no task
        secret.start()
        await limiter.admit("b")  # still within the backoff: local, Redis not asked
        assert not limiter.shared
        clock.now = 1.0  # the backoff is over: the next call asks Redis again
        await limiter.admit("a")  # refused locally, but Redis (restarted empty) answers: a is full there
        assert (limiter.shared, limiter.redis_up) == (True, True)
        await limiter.aclose()

    try:
        with caplog.at_level(logging.INFO, logger="gateway_service.shared_limits"):
            asyncio.run(run())
    finally:
        secret.stop()
    assert states == [True, False, True] and errors == ["admit"]
    assert "pw-not-in-logs-7f3a" not in caplog.text
    assert "failed" in caplog.text and "answers again" in caplog.text


def test_the_redis_url_is_a_secret_and_backends_may_be_discovered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOPPU_GATEWAY_REDIS_URL", "redis://:pw-settings-5e1d@10.0.0.1:6379/0")
    monkeypatch.setenv("SOPPU_GATEWAY_BACKENDS", '[{"url": "http://engines:8082", "discover": "dns"}]')
    settings = GatewaySettings()
    assert "pw-settings-5e1d" not in repr(settings) and settings.redis_url.get_secret_value().endswith("/0")
    assert settings.backends[0].discover == "dns" and where(settings.redis_url.get_secret_value()) == "10.0.0.1:6379"
    monkeypatch.setenv("SOPPU_GATEWAY_REDIS_URL", "http://:pw-settings-5e1d@10.0.0.1")
    with pytest.raises(ValueError, match="redis://") as refused:
        GatewaySettings()
    assert "pw-settings-5e1d" not in str(refused.value)
    monkeypatch.setenv("SOPPU_GATEWAY_REDIS_URL", "")
    assert not GatewaySettings().redis_url.get_secret_value()  # empty, the default: limits in this process
