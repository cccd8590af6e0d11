"""The gateway as real processes: ``python -m gateway_service`` in front of (a) the real engine on the example
model, both reading a moto S3 bucket where the example users are published, (b) two stub backends
(``tests/support/stub_backend.py``) that record what they receive, over a local-directory store, (c) a stub that
speaks as LoRAX 0.12.1 does (``lorax_stub.py``), over a local-directory store, and (d) two gateway replicas on
one real ``redis-server`` (``tests/support/redis_server.py``) in front of one stub."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from soppu.auth import KeyRing, Role
from soppu.store import LocalStore, S3Store
from tests.gateway_service.gateway_support import (
    ADMIN_KEY,
    REPO_ROOT,
    Deployment,
    ExampleUser,
    load_users,
    publish,
    start_stub,
)
from tests.gateway_service.lorax_stub import start_lorax_stub
from tests.gateway_service.replicas_support import Replicas
from tests.support.processes import MOTO_ENV, ServiceProcess, start_service
from tests.support.redis_server import RedisServer

_QUIET = {"OMP_NUM_THREADS": "1"}  # tiny matrices: threads only add barriers on a shared box


def _gateway(log: Path, store_url: str, backends: list[dict[str, str]], env: dict[str, str]) -> ServiceProcess:
    settings = {
        "SOPPU_STORE_URL": store_url,
        "SOPPU_ADMIN_KEY": ADMIN_KEY,
        "SOPPU_GATEWAY_BACKENDS": json.dumps(backends),
        "SOPPU_GATEWAY_HEALTH_INTERVAL_S": "0.5",
        "SOPPU_GATEWAY_RETRY_BACKOFF_S": "0.01",
        **_QUIET,
        **env,
    }

    def command(port: int) -> list[str]:
        return [sys.executable, "-m", "gateway_service", "--port", str(port)]

    return start_service(command, log=log, ready_path="/healthz", env=settings, timeout_s=60, cwd=REPO_ROOT)


@pytest.fixture(scope="session")
def example_set(examples_dir: Path) -> tuple[list[ExampleUser], dict[str, str]]:
    return load_users(examples_dir)


@pytest.fixture(scope="session")
def published(
    moto_server: str, example_set: tuple[list[ExampleUser], dict[str, str]]
) -> tuple[S3Store, dict[str, str]]:
    """A fresh bucket holding every example user's adapter as version 1, and a user key for each."""
    store = S3Store(f"gw-{uuid.uuid4().hex[:12]}", endpoint_url=moto_server, access_key="testing",
                    secret_key="testing", region="us-east-1")  # fmt: skip
    store.ensure_bucket()
    ring = KeyRing(store)
    keys = {}
    for user in example_set[0]:
        publish(store, user.user_id, user.adapter_dir, 1)
        keys[user.user_id] = ring.issue(Role.USER, user.user_id)[0]
    return store, keys


@pytest.fixture(scope="session")
def engine_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    moto_server: str,
    published: tuple[S3Store, dict],
    engine_process: ServiceProcess,
) -> Iterator[Deployment]:
    """The gateway in front of the session's real engine (tests/conftest.py), both on the moto bucket."""
    store, keys = published
    logs = tmp_path_factory.mktemp("engine_gateway")
    s3 = {"S3_ENDPOINT_URL": moto_server, **MOTO_ENV}
    env = {**s3, "SOPPU_GATEWAY_RESOLUTION_TTL_S": "1", "SOPPU_GATEWAY_KEY_CACHE_TTL_S": "1"}
    gateway = _gateway(logs / "gateway.log", store.url, [{"url": engine_process.url, "kind": "engine"}], env)
    service_key = KeyRing(store).issue(Role.SERVICE)[0]
    deployment = Deployment(gateway.url, store, keys, service_key, gateway, [engine_process])
    try:
        yield deployment
    finally:
        gateway.stop()


def _published_users(root: Path, count: int) -> tuple[LocalStore, KeyRing, dict[str, str]]:
    """A local-directory store where users u00, u01, ... have a ``default`` adapter at version 1, with a user
    key each."""
    store = LocalStore(root)
    ring = KeyRing(store)
    keys = {}
    for n in range(count):
        publish(store, f"u{n:02d}", None, 1)
        keys[f"u{n:02d}"] = ring.issue(Role.USER, f"u{n:02d}")[0]
    return store, ring, keys


@pytest.fixture(scope="module")
def stub_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The gateway in front of two recording stub backends, on a local-directory store, with small limits."""
    logs = tmp_path_factory.mktemp("stub_gateway")
    store, ring, keys = _published_users(logs / "store", 16)
    stubs = [start_stub(logs / "stub-a.log"), start_stub(logs / "stub-b.log")]
    env = {
        "SOPPU_GATEWAY_USER_REQUESTS_PER_S": "1",
        "SOPPU_GATEWAY_USER_REQUEST_BURST": "6",
        "SOPPU_GATEWAY_USER_TOKENS_PER_S": "10",
        "SOPPU_GATEWAY_USER_TOKEN_BURST": "50",
        "SOPPU_GATEWAY_DEFAULT_MAX_NEW_TOKENS": "4",
        "SOPPU_GATEWAY_MAX_NEW_TOKENS_CAP": "16",
        "SOPPU_GATEWAY_MAX_BODY_BYTES": "4096",
        "SOPPU_GATEWAY_MAX_CONCURRENT_REQUESTS": "3",
        "SOPPU_GATEWAY_USER_MAX_IN_FLIGHT": "2",
        "SOPPU_GATEWAY_BODY_TIMEOUT_S": "2",
    }
    backends = [{"url": stubs[0].url, "kind": "engine"}, {"url": stubs[1].url, "kind": "lorax"}]
    try:
        gateway = _gateway(logs / "gateway.log", str(store.root), backends, env)
    except BaseException:
        for stub in stubs:
            stub.stop()
        raise
    deployment = Deployment(gateway.url, store, keys, service_key=ring.issue(Role.SERVICE)[0], process=gateway)
    deployment.backends = stubs
    try:
        yield deployment
    finally:
        gateway.stop()
        for stub in deployment.backends:  # the failover test replaces the ones it stopped
            stub.stop()


@pytest.fixture(scope="module")
def lorax_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The gateway in front of one LoRAX-shaped stub (kind ``lorax``), on a local-directory store; users u00-u07
    have a ``default`` adapter at version 1."""
    logs = tmp_path_factory.mktemp("lorax_gateway")
    store, ring, keys = _published_users(logs / "store", 8)
    stub = start_lorax_stub(logs / "lorax-stub.log")
    try:
        env = {"SOPPU_GATEWAY_RESOLUTION_TTL_S": "60"}  # a cached resolution outlives the retired-version test
        gateway = _gateway(logs / "gateway.log", str(store.root), [{"url": stub.url, "kind": "lorax"}], env)
    except BaseException:
        stub.stop()
        raise
    deployment = Deployment(gateway.url, store, keys, ring.issue(Role.SERVICE)[0], gateway, [stub])
    try:
        yield deployment
    finally:
        gateway.stop()
        stub.stop()


def _redis(log: Path, password: str | None = None) -> RedisServer:
    """A started redis-server; without one the test fails (never skips), saying how to install it."""
    try:
        return RedisServer(log, password).start()
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh, empty redis-server of the test's own."""
    server = _redis(tmp_path / "redis.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Two gateways sharing one Redis (password-protected: its URL is a secret) in front of one stub backend, on
    a local-directory store where u00-u07 have a ``default`` adapter at version 1. Request burst 5 and token
    burst 50 per user, refilling too slowly to matter during the tests; resolutions and keys are cached for 60 s,
    so only an invalidation makes a replica read them again."""
    logs = tmp_path_factory.mktemp("replicas")
    redis = _redis(logs / "redis.log", password=f"pw-{uuid.uuid4().hex}")
    store, ring, keys = _published_users(logs / "store", 8)
    env = {
        "SOPPU_GATEWAY_REDIS_URL": redis.url,
        "SOPPU_GATEWAY_REDIS_RETRY_S": "0.2",
        "SOPPU_GATEWAY_REDIS_TIMEOUT_S": "2",  # a loaded test box is slow, not down
        "SOPPU_GATEWAY_USER_REQUESTS_PER_S": "0.001",
        "SOPPU_GATEWAY_USER_REQUEST_BURST": "5",
        "SOPPU_GATEWAY_USER_TOKENS_PER_S": "0.001",
        "SOPPU_GATEWAY_USER_TOKEN_BURST": "50",
        "SOPPU_GATEWAY_DEFAULT_MAX_NEW_TOKENS": "4",
        "SOPPU_GATEWAY_RESOLUTION_TTL_S": "60",
        "SOPPU_GATEWAY_KEY_CACHE_TTL_S": "60",
    }
    started: list[ServiceProcess] = []
    try:
        started.append(start_stub(logs / "stub.log"))
        backends = [{"url": started[0].url, "kind": "engine"}]
        for name in ("a", "b"):
            started.append(_gateway(logs / f"gateway-{name}.log", str(store.root), backends, env))
    except BaseException:
        for process in started:
            process.stop()
        redis.stop()
        raise
    service_key = ring.issue(Role.SERVICE)[0]
    gateways = [Deployment(g.url, store, keys, service_key, g, started[:1]) for g in started[1:]]
    try:
        yield Replicas(redis, gateways, started[:1])
    finally:
        for process in reversed(started):
            process.stop()
        redis.stop()
