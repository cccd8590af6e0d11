"""The gateway refuses sampling parameters outside the engine's limits (``soppu.sampling``) with 422
``validation`` before anything is forwarded: one such request would otherwise fail every request its backend
batched with it (``repetition_penalty: 1e-300``), or a backend would answer 500 (``seed: 2**64``). A temperature
LoRAX accepts (any above 0, ``1e-300`` too) passes: the engine samples it at ``min_temperature``.

In-process (ASGI): the only backend is an address nothing listens on, so a request that got past the check would
be answered by resolution or routing (404, 503), never 422."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway_service.app import create_app
from gateway_service.settings import BackendConfig, GatewaySettings
from soppu.auth import KeyRing, Role
from soppu.store import LocalStore

BAD = [
    ({"temperature": 1000.0}, "temperature"),
    ({"seed": 2**64}, "seed"),
    ({"repetition_penalty": 1e-300}, "repetition_penalty"),
    ({"top_k": 2**31}, "top_k"),
    ({"frequency_penalty": 3.0}, "frequency_penalty"),
]


@pytest.fixture
def answers(tmp_path: Path) -> Any:
    store = LocalStore(tmp_path / "store")
    key = KeyRing(store).issue(Role.USER, "alice")[0]
    settings = GatewaySettings(
        store_url=str(store.root), backends=[BackendConfig(url="http://127.0.0.1:9")], health_timeout_s=0.5
    )
    app = create_app(settings)

    def post(requests: list[tuple[str, dict[str, Any]]]) -> list[httpx.Response]:
        async def run() -> list[httpx.Response]:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                headers = {"Authorization": f"Bearer {key}"}
                async with httpx.AsyncClient(transport=transport, base_url="http://gw", headers=headers) as client:
                    return [await client.post(path, json=body) for path, body in requests]

        return asyncio.run(run())

    return post


def test_bad_sampling_values_are_refused_at_the_edge(answers: Any) -> None:
    requests = []
    for values, _ in BAD:
        requests.append(("/generate", {"inputs": "My pet is a", "parameters": values}))
        requests.append(("/generate_stream", {"inputs": "My pet is a", "parameters": values}))
        requests.append(("/v1/completions", {"model": "default", "prompt": "My pet is a", **values}))
    good = {"temperature": 0.7, "seed": 2**64 - 1, "top_k": 5}
    requests.append(("/generate", {"inputs": "My pet is a", "parameters": good}))
    requests.append(("/generate", {"inputs": "My pet is a", "parameters": {"temperature": 1e-300}}))  # as LoRAX
    *refused, passed, tiny = answers(requests)
    for response, (_, field) in zip(refused, [b for b in BAD for _ in range(3)], strict=True):
        assert response.status_code == 422, response.text
        assert response.json()["error_type"] == "validation" and f"{field}`" in response.json()["error"]
    assert passed.status_code == tiny.status_code == 404, passed.text  # on to resolution: alice has no adapter
