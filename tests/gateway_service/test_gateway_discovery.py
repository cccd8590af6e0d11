"""Backends found through DNS (``"discover": "dns"``, a Kubernetes headless Service): real stub backends on two
loopback addresses (127.0.0.1 and 127.0.0.2, one port), a resolver the test answers for between health-check
rounds, and once the system's own resolver on ``localhost``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway_service.routing import BackendPool, resolve_host
from gateway_service.settings import BackendConfig, BackendKind, GatewaySettings
from tests.gateway_service.gateway_support import start_stub
from tests.support.processes import free_port

_KEYS = [f"exports/u{n:02d}/default/v00000001" for n in range(40)]


@pytest.fixture
def two_stubs(tmp_path: Path) -> Iterator[int]:
    """Stub backends on 127.0.0.1:PORT and 127.0.0.2:PORT; yields PORT."""
    port = free_port()
    stubs = [start_stub(tmp_path / "one.log", port, "127.0.0.1")]
    try:
        stubs.append(start_stub(tmp_path / "two.log", port, "127.0.0.2"))
        yield port
    finally:
        for stub in stubs:
            stub.stop()


def test_the_pool_follows_dns_and_keeps_what_it_knew_of_addresses_that_stay(two_stubs: int) -> None:
    port = two_stubs
    answer: list[str] | OSError = ["127.0.0.1"]
    asked: list[str] = []

    async def resolve(host: str) -> list[str]:
        asked.append(host)
        if isinstance(answer, OSError):
            raise answer
        return list(answer)

    one, two = f"http://127.0.0.1:{port}", f"http://127.0.0.2:{port}"
    config = BackendConfig(url=f"http://engines.soppu.svc:{port}", kind=BackendKind.ENGINE, discover="dns")

    async def run() -> None:
        nonlocal answer
        pool = BackendPool([config], 64, 1.25, resolve=resolve)
        listed = pool.backends  # the metrics hold this very list: discovery must change it in place
        assert pool.backends == []  # nothing until the first lookup
        async with httpx.AsyncClient(trust_env=False) as client:
            await pool.check_all(client, 5.0, 5.0)
            assert asked == ["engines.soppu.svc"] and [b.url for b in pool.backends] == [one]
            first = pool.backends[0]
            assert first.healthy and first.kind is BackendKind.ENGINE and first.model_id == "stub-127.0.0.1"
            assert all(pool.plan(key) == [first] for key in _KEYS)

            answer = ["127.0.0.2", "127.0.0.1"]  # a replica joins
            first.in_flight = 3  # a request under way on the one that stays
            await pool.check_all(client, 5.0, 5.0)
            assert [b.url for b in pool.backends] == [one, two] and pool.backends is listed
            assert pool.backends[0] is first and first.in_flight == 3  # kept, not rebuilt
            assert all(b.healthy for b in pool.backends) and pool.backends[1].model_id == "stub-127.0.0.2"
            first.in_flight = 0
            homes = {key: pool.plan(key)[0].url for key in _KEYS}
            assert set(homes.values()) == {one, two}  # the ring spreads adapters over both
            assert all(pool.plan(key)[0].url == homes[key] for key in _KEYS)  # one home each

            answer = OSError("name resolution failed")  # a failed lookup keeps the last answer
            await pool.check_all(client, 5.0, 5.0)
            assert [b.url for b in pool.backends] == [one, two]

            answer = ["127.0.0.2"]  # one leaves: its adapters move, the others' stay where they were
            await pool.check_all(client, 5.0, 5.0)
            assert [b.url for b in pool.backends] == [two] and pool.backends is listed
            assert all(pool.plan(key)[0].url == two for key in _KEYS if homes[key] == two)

    asyncio.run(run())


def test_localhost_through_the_system_resolver(two_stubs: int) -> None:
    port = two_stubs

    async def run() -> None:
        assert "127.0.0.1" in await resolve_host("localhost")
        settings = GatewaySettings(backends=[{"url": f"http://localhost:{port}", "kind": "lorax", "discover": "dns"}])
        pool = BackendPool(settings.backends, settings.virtual_nodes, settings.load_factor)
        async with httpx.AsyncClient(trust_env=False) as client:
            await pool.check_all(client, 5.0, 5.0)
        found = {b.url: b for b in pool.backends}
        # localhost may also name ::1, where nothing listens: that backend is simply down.
        assert set(found) <= {f"http://127.0.0.1:{port}", f"http://[::1]:{port}"}
        backend = found[f"http://127.0.0.1:{port}"]
        assert backend.healthy and backend.kind is BackendKind.LORAX and backend.model_id == "stub-127.0.0.1"
        assert pool.plan("any adapter")[0] is backend

    asyncio.run(run())
