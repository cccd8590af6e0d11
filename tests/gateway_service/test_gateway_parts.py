"""The gateway's parts in-process, where a fake clock or a scripted race says more than a process could: the hash
ring and its load bound, the token buckets, the caches' invalidation races, resolution per backend kind, SSE
event splitting, what bad keys cost, and the settings."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway_service.caching import Entry, TtlCache
from gateway_service.errors import (
    AdapterNotFound,
    InvalidRequest,
    NoBackend,
    Overloaded,
    RateLimited,
    TooManyInFlight,
)
from gateway_service.keys import KeyCache
from gateway_service.limits import ConcurrencyGate, UserLimiter
from gateway_service.metrics import GatewayMetrics
from gateway_service.resolution import Resolver
from gateway_service.routing import BackendPool
from gateway_service.service import Gateway
from gateway_service.settings import BackendConfig, BackendKind, GatewaySettings
from gateway_service.sse import split_events
from gateway_service.transport import StreamTransport
from soppu.auth import KeyRing, Role, format_key
from soppu.store import LocalStore
from soppu.store.base import StoredObject
from soppu.store.layout import pointer_key
from tests.gateway_service.gateway_support import publish


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _pool(n: int, load_factor: float = 1.25) -> BackendPool:
    return BackendPool([BackendConfig(url=f"http://b{i}:80") for i in range(n)], 64, load_factor)


def test_ring_gives_each_adapter_one_home_and_moves_little_when_a_backend_leaves() -> None:
    pool = _pool(4)
    keys = [f"exports/u{i}/default/v00000001" for i in range(2000)]
    homes = {key: pool.plan(key)[0].url for key in keys}
    assert homes == {key: pool.plan(key)[0].url for key in keys}  # stable
    spread = Counter(homes.values())
    assert len(spread) == 4 and min(spread.values()) > 300  # roughly even with 64 virtual nodes each
    assert all(len({b.url for b in pool.plan(key)}) == 4 for key in keys[:50])  # the failover order has all
    pool.backends[0].healthy = False
    moved = [key for key in keys if pool.plan(key)[0].url != homes[key]]
    assert all(homes[key] == "http://b0:80" for key in moved)  # only the lost backend's adapters move
    for backend in pool.backends:
        backend.healthy = False
    with pytest.raises(NoBackend):
        pool.plan(keys[0])


def test_bounded_load_passes_over_a_busy_backend() -> None:
    pool = _pool(3)
    key = "exports/hot/default/v00000001"
    home = pool.plan(key)[0]
    home.in_flight = 5  # bound: ceil(1.25 * (5 + 1) / 3) = 3
    assert pool.plan(key)[0] is not home
    for backend in pool.backends:
        backend.in_flight = 2  # bound: ceil(1.25 * (6 + 1) / 3) = 3
    assert pool.plan(key)[0] is home


def test_token_buckets_refill_charge_after_the_fact_and_say_when_to_retry() -> None:
    clock = FakeClock()
    limited: list[str] = []
    limiter = UserLimiter(2, 3, 10, 20, clock=clock, on_limited=limited.append)
    for _ in range(3):
        limiter.admit("a")
    with pytest.raises(RateLimited) as refused:
        limiter.admit("a")
    assert refused.value.headers["Retry-After"] == "1" and limited == ["requests"]
    limiter.admit("b")  # buckets are per user
    clock.now = 0.5  # one request refilled
    limiter.admit("a")
    limiter.charge_tokens("c", 45)  # 20 - 45 = -25: in debt
    clock.now = 2.0  # -25 + 10 * 1.5 = -10 -> 1 s more
    with pytest.raises(RateLimited) as refused:
        limiter.admit("c")
    assert refused.value.headers["Retry-After"] == "1" and limited[-1] == "tokens"
    clock.now = 3.5
    limiter.admit("c")
    unlimited = UserLimiter(0, 1, 0, 1, clock=clock)
    for _ in range(100):
        unlimited.admit("a")
        unlimited.charge_tokens("a", 1000)


def test_concurrency_gate_fails_fast() -> None:
    gate = ConcurrencyGate(2)
    gate.enter("a")
    gate.enter("a")
    with pytest.raises(Overloaded):
        gate.enter("b")
    gate.leave("a")
    gate.enter("b")


def test_one_user_cannot_hold_more_than_its_share_of_the_gate() -> None:
    gate = ConcurrencyGate(4, per_user=2)
    gate.enter("a")
    gate.enter("a")
    with pytest.raises(TooManyInFlight) as refused:
        gate.enter("a")
    assert (refused.value.status, refused.value.error_type) == (429, "too_many_in_flight")
    assert refused.value.headers["Retry-After"] == "1" and gate.inside == 2
    gate.enter("b")  # another user still gets in
    gate.leave("a")
    gate.enter("a")  # a finished request frees the user's slot
    gate.leave("a")
    gate.leave("a")
    gate.leave("b")
    assert gate.inside == 0 and not gate._users  # nobody inside: nothing kept per user


def test_a_load_begun_before_an_invalidation_is_not_kept() -> None:
    async def scenario() -> None:
        cache: TtlCache[str, str] = TtlCache(ttl_s=60)
        release = asyncio.Event()
        loads = 0

        async def slow_load() -> Entry[str]:
            nonlocal loads
            loads += 1
            await release.wait()
            return Entry("stale", cache.now())

        first = asyncio.create_task(cache.load("k", slow_load))
        second = asyncio.create_task(cache.load("k", slow_load))  # joins the first load
        await asyncio.sleep(0)
        assert cache.invalidate() == 0
        release.set()
        assert await first == await second and loads == 1
        assert cache.fresh("k") is None  # answered, but not kept: the invalidation came after the read began

        async def fresh_load() -> Entry[str]:
            return Entry("new", cache.now())

        assert (await cache.load("k", fresh_load)).value == "new"
        assert cache.fresh("k") is not None

    asyncio.run(scenario())


class CountingStore(LocalStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gets = 0

    def get(self, key: str) -> StoredObject:
        self.gets += 1
        return super().get(key)


def test_bad_keys_cost_at_most_one_store_read_per_key_id(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    key, record = KeyRing(store).issue(Role.USER, "alice")
    keys = KeyCache(store, "admin-key", ttl_s=60)

    async def refused(presented: str, times: int = 50) -> bool:
        found = await asyncio.gather(*(keys.authenticate(presented) for _ in range(times)))
        return all(principal is None for principal in found)

    async def scenario() -> None:
        malformed = [f"sk-soppu-{n:016x}.not-a-secret" for n in range(100)] + [key[:-1] + "x"]
        assert all([await refused(bad, 1) for bad in malformed])
        assert store.gets == 0  # malformed: refused on sight
        forged = [format_key(f"{n:016x}", "s" * 43) for n in range(3)]
        assert all([await refused(bad) for bad in forged])
        assert store.gets == 3  # one read per unknown id, however often it is tried
        wrong_secrets = [format_key(record.key_id, f"{n:043d}") for n in range(20)]
        assert await keys.authenticate(key) == record.principal
        assert all([await refused(bad, 1) for bad in wrong_secrets])
        assert store.gets == 4  # the record is read once for the key and all the wrong secrets
        assert keys.invalidate(key_id=record.key_id) == 4  # the key and the three refusals
        assert await keys.authenticate(key) == record.principal and store.gets == 5

    asyncio.run(scenario())


def test_resolution_per_kind_etag_revalidation_and_removal(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    lookups: list[str] = []
    resolver = Resolver(store, ttl_s=0, on_lookup=lookups.append)  # TTL 0: every lookup goes to the store

    async def resolve() -> object:
        return await resolver.resolve("alice", "default")

    assert asyncio.run(resolve()) is None
    publish(store, "alice", None, 1)
    first = asyncio.run(resolve())
    assert first is not None and first.version == 1  # type: ignore[attr-defined]
    export = str(store.root / "exports/alice/default/v00000001")
    assert {k: (t.adapter_id, t.adapter_source) for k, t in first.targets.items()} == {  # type: ignore[attr-defined]
        BackendKind.LORAX: (export, "local"),
        BackendKind.ENGINE: (export, "local"),
    }
    lookups.clear()
    assert asyncio.run(resolve()) == first and lookups == ["revalidated"]
    publish(store, "alice", None, 2, core_prefix="cores/alice/default/v00000002")
    second = asyncio.run(resolve())
    assert second.version == 2 and lookups[-1] == "miss"  # type: ignore[attr-defined]
    assert second.targets[BackendKind.ENGINE].adapter_id == str(store.root / "cores/alice/default/v00000002")  # type: ignore[attr-defined]
    assert second.targets[BackendKind.LORAX].adapter_id.endswith("exports/alice/default/v00000002")  # type: ignore[attr-defined]
    store.delete(pointer_key("alice", "default"))
    assert asyncio.run(resolve()) is None


def test_s3_resolution_names_the_bucket(tmp_path: Path) -> None:
    from gateway_service.resolution import locator

    target = locator("s3://soppu")("exports/alice/default/v00000001")
    assert (target.adapter_id, target.adapter_source) == ("s3://soppu/exports/alice/default/v00000001", "s3")


def test_split_events_waits_for_whole_events() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b'data: {"a"', b": 1}\n", b"\ndata: 2\n\ndata: 3\n\n", b"data: [DONE]"):
            yield chunk

    async def collect() -> list[bytes]:
        return [event async for event in split_events(chunks())]

    assert asyncio.run(collect()) == [b'data: {"a": 1}\n\n', b"data: 2\n\n", b"data: 3\n\n", b"data: [DONE]\n\n"]


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOPPU_STORE_URL", "s3://bucket")
    monkeypatch.setenv("SOPPU_ADMIN_KEY", "gateway-admin-key-0123456789")
    monkeypatch.setenv("SOPPU_GATEWAY_BACKENDS", '[{"url": "http://lorax:80/", "kind": "lorax"}]')
    monkeypatch.setenv("SOPPU_GATEWAY_NO_ADAPTER", "base")
    settings = GatewaySettings()
    assert settings.store_url == "s3://bucket" and settings.admin_key is not None
    assert "0123456789" not in repr(settings)
    assert settings.backends == [BackendConfig(url="http://lorax:80", kind=BackendKind.LORAX)]
    assert settings.no_adapter == "base" and settings.port == 8080
    with pytest.raises(ValueError, match="http"):
        GatewaySettings(backends=[{"url": "lorax:80"}])  # type: ignore[list-item]


@pytest.mark.parametrize("policy", ["base", "404"])
def test_no_adapter_policy_applies_to_the_default_adapter_only(tmp_path: Path, policy: str) -> None:
    store = LocalStore(tmp_path / "store")
    settings = GatewaySettings(store_url=str(store.root), no_adapter=policy)  # type: ignore[arg-type]
    gateway = Gateway(settings, store, StreamTransport(), GatewayMetrics())

    async def target(adapter: str | None) -> object:
        return await gateway.target("carol", adapter)

    if policy == "base":
        served = asyncio.run(target(None))
        assert served.resolution is None and served.response_headers() == {"x-adapter-source": "base"}  # type: ignore[attr-defined]
        assert served.for_kind(BackendKind.LORAX) is None  # type: ignore[attr-defined]
    else:
        with pytest.raises(AdapterNotFound):
            asyncio.run(target(None))
    with pytest.raises(AdapterNotFound):  # a named adapter that does not exist is never the base model
        asyncio.run(target("other"))
    with pytest.raises(InvalidRequest):  # a storage path is no adapter name
        asyncio.run(target("s3://bucket/exports/dave/default/v00000001"))


def test_a_backend_error_reaches_the_client_without_storage_ids() -> None:
    # Issue 13 item 22: the engine's error named the id the gateway sent, s3://bucket/exports/user/adapter/v...
    import httpx

    from gateway_service.forward import _upstream_error
    from gateway_service.routing import Backend
    from gateway_service.upstream import Reply

    body = b'{"error": "adapter \'s3://soppu/exports/alice/default/v00000003\' could not be loaded", "error_type": "x"}'
    reply = Reply(Backend("http://127.0.0.1:1", BackendKind.ENGINE), 424, httpx.Headers(), body)
    content = _upstream_error(reply).body
    assert b"s3://" not in content and b"exports/" not in content and b"soppu" not in content
    assert b"could not be loaded" in content


def test_no_backend_answers_retry_after() -> None:
    # Found by the serving drill: while the only engine restarted, 503 no_backend came without Retry-After.
    from gateway_service.errors import NoBackend

    assert NoBackend("no healthy backend").headers == {"Retry-After": "1"}
