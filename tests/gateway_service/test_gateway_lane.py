"""The generation routes' fast lane (``gateway_service.lane``) answers exactly as the FastAPI routes it stands in
front of: the same requests, good and bad, to the app with the lane and to the same app without it, against one
stub backend, get the same status, body and headers (but the request id); and the stub receives the same
upstream requests. In-process (ASGI), so both apps see the same store and the same backend."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway_service.app import create_app
from gateway_service.lane import FastLane
from gateway_service.settings import BackendConfig, GatewaySettings
from soppu.auth import KeyRing, Role
from soppu.store import LocalStore
from tests.gateway_service.gateway_support import publish, start_stub

Request = tuple[str, dict[str, str], bytes]  # path, headers, body

_SKIPPED_HEADERS = {"x-request-id", "date", "server"}


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[GatewaySettings, dict[str, str]]]:
    store = LocalStore(tmp_path / "store")
    publish(store, "alice", None, 1)
    ring = KeyRing(store)
    keys = {"alice": ring.issue(Role.USER, "alice")[0], "bob": ring.issue(Role.USER, "bob")[0]}
    keys["service"] = ring.issue(Role.SERVICE)[0]
    stub = start_stub(tmp_path / "stub.log")
    try:
        settings = GatewaySettings(
            store_url=str(store.root), backends=[BackendConfig(url=stub.url)], user_requests_per_s=0, retries=0
        )
        yield settings, keys
    finally:
        stub.stop()


def _upstream(settings: GatewaySettings) -> list[dict[str, Any]]:
    """What the stub received since the last call (request ids aside)."""
    stub = settings.backends[0].url
    received = httpx.get(f"{stub}/stub/requests").json()
    httpx.post(f"{stub}/stub/reset")
    for request in received:
        request["headers"].pop("x-request-id")
    return received  # type: ignore[no-any-return]


def _answers(settings: GatewaySettings, requests: list[Request], *, lane: bool) -> list[dict[str, Any]]:
    app = create_app(settings)
    if not lane:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not FastLane]
    assert any(m.cls is FastLane for m in app.user_middleware) is lane

    async def run() -> list[dict[str, Any]]:
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            seen = []
            for path, headers, body in requests:
                r = await c.post(path, headers=headers, content=body)
                kept = sorted((k, v) for k, v in r.headers.items() if k not in _SKIPPED_HEADERS)
                seen.append(
                    {"request": (path, headers, body), "status": r.status_code, "headers": kept, "body": r.text}
                )
            return seen

    return asyncio.run(run())


def _requests(keys: dict[str, str]) -> list[Request]:
    alice = {"authorization": f"Bearer {keys['alice']}", "content-type": "application/json"}
    good = json.dumps({"inputs": "My pet is a", "parameters": {"max_new_tokens": 2}}).encode()
    chat = json.dumps({"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    completion = json.dumps({"model": "default", "prompt": "hi", "max_tokens": 2}).encode()
    requests: list[Request] = []
    for path, body in [
        ("/generate", good),
        ("/generate_stream", good),
        ("/", good),
        ("/", json.dumps({"inputs": "x", "stream": True}).encode()),
        ("/v1/completions", completion),
        ("/v1/chat/completions", chat),
        ("/v1/completions", json.dumps({"model": "default", "prompt": "hi", "stream": True}).encode()),
    ]:
        requests.append((path, alice, body))
    headers_variants = [
        {"content-type": "application/json"},  # no key
        {"authorization": "Bearer", "content-type": "application/json"},
        {"authorization": f"bearer   {keys['alice']}  ", "content-type": "application/json"},
        {"authorization": f"Basic {keys['alice']}", "content-type": "application/json"},
        {"authorization": "Bearer sk-soppu-nonsense", "content-type": "application/json"},
        {"x-api-key": keys["alice"], "content-type": "application/json"},
        {"authorization": "Bearer wrong", "x-api-key": keys["alice"], "content-type": "application/json"},
        {"authorization": f"Bearer {keys['alice']}"},  # no content type
        {"authorization": f"Bearer {keys['alice']}", "content-type": "text/plain"},
        {"authorization": f"Bearer {keys['alice']}", "content-type": "application/json; charset=utf-8"},
        {"authorization": f"Bearer {keys['alice']}", "content-type": "application/vnd.x+json"},
    ]
    requests += [("/generate", h, good) for h in headers_variants]
    bob = {"authorization": f"Bearer {keys['bob']}", "content-type": "application/json"}
    service = {"authorization": f"Bearer {keys['service']}", "content-type": "application/json"}
    bodies = [
        b"",
        b"{",
        b"[]",
        b"null",
        b'"text"',
        b"\xff\xfe",
        b"{}",
        json.dumps({"inputs": 3}).encode(),
        json.dumps({"inputs": "x", "parameters": {"temperature": -1, "top_p": 2}}).encode(),
        json.dumps({"inputs": "x", "parameters": {"temperature": 1000.0}}).encode(),
        json.dumps({"inputs": "x", "parameters": {"merged_adapters": {"ids": ["a"]}}}).encode(),
        json.dumps({"inputs": "x", "parameters": {"adapter_id": "other"}}).encode(),
        json.dumps({"inputs": "x", "adapter": "../x"}).encode(),
        json.dumps({"inputs": "x", "user_id": "bob"}).encode(),
        json.dumps({"inputs": "x", "unknown": 1, "parameters": {"api_token": "t", "adapter_source": "hub"}}).encode(),
    ]
    for body in bodies:
        requests += [("/generate", alice, body), ("/generate", {**alice, "authorization": "Bearer x"}, body)]
    requests += [("/generate", bob, good), ("/generate", service, good)]
    requests.append(("/generate", service, json.dumps({"inputs": "x", "user_id": "alice"}).encode()))
    requests.append(("/v1/completions", alice, json.dumps({"model": "default", "prompt": ["a", "b"]}).encode()))
    requests.append(("/v1/chat/completions", alice, json.dumps({"model": "default", "messages": []}).encode()))
    requests.append(("/v1/chat/completions", service, json.dumps({"model": "default", "user": "alice"}).encode()))
    return requests


def test_the_lane_answers_as_the_routes_do(setup: tuple[GatewaySettings, dict[str, str]]) -> None:
    settings, keys = setup
    requests = _requests(keys)
    _upstream(settings)
    with_lane = _answers(settings, requests, lane=True)
    upstream_with_lane = _upstream(settings)
    without = _answers(settings, requests, lane=False)
    assert upstream_with_lane == _upstream(settings) and len(upstream_with_lane) >= 10
    assert {a["status"] for a in with_lane} >= {200, 401, 403, 404, 422}
    for fast, routed in zip(with_lane, without, strict=True):
        assert fast == routed
