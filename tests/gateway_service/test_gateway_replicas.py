"""Two gateway processes on one real redis-server (``replicas`` in conftest.py): a user's request and token limits
hold across both; the compressor's notifier, publishing on Redis, invalidates both replicas' caches; and a Redis
outage (kill -9) leaves requests served and /readyz 200 with limits local, until Redis is back and both replicas
share limits again. Nothing here times anything: what happens in the background is polled for, with a generous
deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
from pydantic import SecretStr

from compressor_service.notify import GatewayNotifier
from gateway_service.shared_limits import bucket_key
from soppu.auth import KeyRing, Role, parse_key
from soppu.protocol.invalidation import CHANNEL
from tests.gateway_service.gateway_support import Deployment, publish
from tests.gateway_service.replicas_support import Replicas, metric, readiness

_DEADLINE_S = 60.0  # for polls only: generous, because the box is shared


def _eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {_DEADLINE_S:g} s: {what}"
        time.sleep(0.05)


def _post(gw: Deployment, user: str, key: str | None = None, **parameters: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else gw.headers(user)
    body = {"inputs": "hello", "parameters": parameters}
    return httpx.post(f"{gw.url}/generate", json=body, headers=headers, timeout=30)


def _notify(replicas: Replicas, **what: object) -> None:
    """What the compressor does on a deletion or a revocation: here with Redis only (no gateway URLs)."""

    async def run() -> None:
        notifier = GatewayNotifier([], SecretStr("unused"), 5.0, replicas.redis.url)
        try:
            await notifier.invalidate(**what)  # type: ignore[arg-type]
        finally:
            await notifier.aclose()

    asyncio.run(run())


def _both_subscribed(replicas: Replicas) -> None:
    # Pub/sub keeps nothing for a subscriber that is not there yet: publish only once both listen.
    with replicas.redis.client() as r:
        _eventually(lambda: r.pubsub_numsub(CHANNEL)[0][1] == 2, "both replicas subscribed")


def test_a_users_request_limit_holds_across_both_replicas(replicas: Replicas) -> None:
    a, b = replicas.gateways
    answers = [_post(gw, "u00") for _ in range(4) for gw in (a, b)]  # 8 requests, alternating; the burst is 5
    statuses = [r.status_code for r in answers]
    assert statuses.count(200) == 5 and statuses[:5] == [200] * 5, statuses
    for refused in answers[5:]:
        assert (refused.status_code, refused.json()["error_type"]) == (429, "rate_limited")
        assert "requests" in refused.json()["error"] and int(refused.headers["retry-after"]) >= 1
    assert _post(b, "u07").status_code == 200  # one user's limit is not another's


def test_token_debt_run_up_on_one_replica_is_seen_by_the_other(replicas: Replicas) -> None:
    a, b = replicas.gateways
    for _ in range(4):  # 50 tokens of burst: 16 * 4 puts u01 14 tokens in debt
        assert _post(a, "u01", max_new_tokens=16).status_code == 200
    # The charge runs after each response, in a task of its own: wait until the last one is in Redis.
    with replicas.redis.client() as r:
        _eventually(lambda: float(r.hget(bucket_key("u01"), "t") or 0) < 0, "u01's debt charged in Redis")
    refused = _post(b, "u01")
    assert (refused.status_code, refused.json()["error_type"]) == (429, "rate_limited")
    assert "tokens" in refused.json()["error"] and int(refused.headers["retry-after"]) >= 1


def test_a_published_invalidation_reaches_both_replicas(replicas: Replicas) -> None:
    a, b = replicas.gateways
    store = a.store
    for gw in (a, b):  # each replica caches u02's resolution (v1) for 60 s
        r = _post(gw, "u02")
        assert r.status_code == 200 and "v00000001" in r.json()["generated_text"], r.text
    publish(store, "u02", None, 2)
    # Still v1: the cache holds, nothing told it otherwise (asked of one replica: u02 has 5 requests in all).
    assert "v00000001" in _post(a, "u02").json()["generated_text"]
    _both_subscribed(replicas)
    before = [metric(gw, "soppu_gateway_invalidations_total", 'source="pubsub"') for gw in (a, b)]
    _notify(replicas, user_id="u02")
    for gw, count in zip((a, b), before, strict=True):
        _eventually(
            lambda gw=gw, count=count: metric(gw, "soppu_gateway_invalidations_total", 'source="pubsub"') > count,
            f"{gw.url} applied the invalidation",
        )
        r = _post(gw, "u02")
        assert r.status_code == 200 and "v00000002" in r.json()["generated_text"], r.text


def test_a_revoked_key_published_is_refused_by_both_replicas(replicas: Replicas) -> None:
    a, b = replicas.gateways
    ring = KeyRing(a.store)
    key = ring.issue(Role.USER, "u03")[0]
    for gw in (a, b):  # each replica caches the key's record for 60 s
        assert _post(gw, "u03", key).status_code == 200
    key_id = parse_key(key)[0]  # type: ignore[index]
    ring.revoke(key_id)
    assert all(_post(gw, "u03", key).status_code == 200 for gw in (a, b))  # cached, and nobody told them
    _both_subscribed(replicas)
    _notify(replicas, key_ids=[key_id])
    for gw in (a, b):
        _eventually(lambda gw=gw: _post(gw, "u03", key).status_code == 401, f"{gw.url} refuses the revoked key")


def test_a_redis_outage_degrades_to_local_limits_and_recovers(replicas: Replicas) -> None:
    """Last in this module: it kills the module's Redis (and starts it again on the same port, empty)."""
    a, b = replicas.gateways
    assert readiness(a) == (200, readiness(a)[1]) and readiness(a)[1]["limits"] == "shared"
    assert readiness(a)[1]["redis"] is True
    assert metric(a, "soppu_gateway_limits_shared") == 1.0
    subscribed_before = [metric(gw, "soppu_gateway_invalidations_total", 'source="subscribed"') for gw in (a, b)]
    replicas.redis.kill()
    for gw in (a, b):
        for _ in range(3):  # served all the same, within the replica's own limits
            r = _post(gw, "u04")
            assert r.status_code == 200, r.text
        status, body = readiness(gw)
        assert status == 200 and body["ready"] is True  # a Redis outage never pulls a replica out of service
        assert (body["limits"], body["redis"]) == ("local", False)
        assert metric(gw, "soppu_gateway_limits_shared") == 0.0
        assert metric(gw, "soppu_gateway_redis_errors_total", 'operation="admit"') >= 1
    replicas.redis.start()  # the same port, empty
    for gw, before in zip((a, b), subscribed_before, strict=True):
        _eventually(lambda gw=gw: readiness(gw)[1]["limits"] == "shared", f"{gw.url} shares limits again")
        assert readiness(gw)[1]["redis"] is True and metric(gw, "soppu_gateway_limits_shared") == 1.0
        # Subscribed again, and every cache dropped: messages published meanwhile were lost.
        _eventually(
            lambda gw=gw, before=before: (
                metric(gw, "soppu_gateway_invalidations_total", 'source="subscribed"') > before
            ),
            f"{gw.url} subscribed again",
        )
    assert _post(b, "u06").status_code == 200
    with replicas.redis.client() as r:
        assert r.exists(bucket_key("u06")) == 1  # admitted through Redis again
    for gw in (a, b):  # the URL's password never reaches a log
        assert replicas.redis.password and replicas.redis.password not in gw.process.log_tail(1_000_000)
        assert "failed" in gw.process.log_tail(1_000_000)
