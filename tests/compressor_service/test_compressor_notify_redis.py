"""The compressor's notifier with ``redis_url``: each invalidation is also published on the channel every gateway
replica subscribes to (a real redis-server); a Redis that is down costs a log line, never a failed call, and the
log never holds the URL's password."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from compressor_service.notify import GatewayNotifier
from compressor_service.settings import CompressorSettings
from soppu.protocol.invalidation import CHANNEL, Invalidation
from tests.support.redis_server import RedisServer

_PASSWORD = "pw-notify-3c9e1b7d"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    try:
        server = RedisServer(tmp_path / "redis.log", password=_PASSWORD).start()
    except RuntimeError as e:  # no redis-server: fail, saying how to install it
        pytest.fail(str(e))
    try:
        yield server
    finally:
        server.stop()


def _invalidate(url: str, **what: object) -> None:
    async def run() -> None:
        notifier = GatewayNotifier([], SecretStr("unused"), 2.0, url)
        try:
            await notifier.invalidate(**what)  # type: ignore[arg-type]
        finally:
            await notifier.aclose()

    asyncio.run(run())


def test_deletions_and_revocations_are_published(redis_server: RedisServer) -> None:
    with redis_server.client() as r, r.pubsub(ignore_subscribe_messages=True) as pubsub:
        pubsub.subscribe(CHANNEL)
        assert pubsub.get_message(timeout=10) is None  # the subscription's own confirmation, ignored
        _invalidate(redis_server.url, user_id="alice", key_ids=["k1", "k2"])
        got = []
        while len(got) < 3:
            message = pubsub.get_message(timeout=30)
            assert message is not None, f"only {got} arrived"
            got.append(json.loads(message["data"]))
    assert sorted(got, key=str) == sorted([{"user_id": "alice"}, {"key_id": "k1"}, {"key_id": "k2"}], key=str)
    assert [Invalidation.from_json(json.dumps(m)) for m in got if "user_id" in m] == [Invalidation(user_id="alice")]


def test_a_redis_that_is_down_costs_a_log_line_not_a_failure(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = redis_server.url
    redis_server.kill()
    with caplog.at_level(logging.WARNING, logger="compressor_service.notify"):
        _invalidate(url, user_id="bob")
    assert "not published" in caplog.text and _PASSWORD not in caplog.text


def test_the_redis_url_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOPPU_COMPRESSOR_REDIS_URL", f"redis://:{_PASSWORD}@10.0.0.1:6379/0")
    settings = CompressorSettings()
    assert _PASSWORD not in repr(settings) and settings.redis_url.get_secret_value().endswith("/0")
    monkeypatch.setenv("SOPPU_COMPRESSOR_REDIS_URL", f"http://:{_PASSWORD}@10.0.0.1")
    with pytest.raises(ValueError, match="redis://") as refused:
        CompressorSettings()
    assert _PASSWORD not in str(refused.value)
