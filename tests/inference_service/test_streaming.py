"""The HTTP layer's streaming and error contract, in-process over a scripted stand-in for the engine: errors
that happen mid-stream, errors before the first token, and a client hanging up. (The real engine cannot be
made to fail on cue; the tests in test_http_api.py run it for real.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from inference_service.app import create_app
from inference_service.engine import (
    EngineInfo,
    EngineStats,
    GenerationFailed,
    GenerationParams,
    GenerationResult,
    Overloaded,
    TokenInfo,
)

Script = list[TokenInfo | GenerationResult | Exception] | None  # None: tokens forever


class ScriptedEngine:
    """Plays ``script`` for every request and counts the generations that were closed."""

    info = EngineInfo("scripted", "float32", "cpu", 64, 128, 4, 8)
    stats = EngineStats(0, 0, 0, 0, 0)
    tokenizer = None
    healthy = True

    def __init__(self, script: Script) -> None:
        self.script = script
        self.closed = 0

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def generate(self, prompt: str, params: GenerationParams, adapter: object) -> AsyncIterator[Any]:
        try:
            for item in self.script if self.script is not None else iter(lambda: TokenInfo(7, "x", -0.5), None):
                await asyncio.sleep(0.001)
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.closed += 1


def _serve(engine: ScriptedEngine, scenario: Callable[[Any, httpx.AsyncClient], Awaitable[None]]) -> None:
    app = create_app(engine=engine)  # type: ignore[arg-type]

    async def run() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
                await scenario(app, client)

    asyncio.run(run())


def _events(body: str) -> list[Any]:
    return [json.loads(line.removeprefix("data: ")) for line in body.splitlines() if line.startswith("data: {")]


def test_an_error_mid_stream_is_an_event_on_the_200() -> None:
    tokens = [TokenInfo(5, "cat", -0.1), TokenInfo(6, ".", -0.2)]
    engine = ScriptedEngine([*tokens, GenerationFailed("the forward pass failed")])

    async def scenario(app: Any, client: httpx.AsyncClient) -> None:
        r = await client.post("/generate_stream", json={"inputs": "My pet is a"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        *sent, error = _events(r.text)
        assert [e["token"]["text"] for e in sent] == ["cat", "."]  # the held-back last token is not lost
        assert error == {"error": "the forward pass failed", "error_type": "generation"}

        r = await client.post("/v1/completions", json={"model": "default", "prompt": "x", "stream": True})
        assert r.status_code == 200 and "[DONE]" not in r.text
        assert _events(r.text)[-1]["error_type"] == "generation"
        metrics = (await client.get("/metrics")).text
        assert 'lorax_request_failure_total{err="generation"} 2.0' in metrics

    _serve(engine, scenario)
    assert engine.closed == 2


def test_errors_before_the_first_token_keep_their_status() -> None:
    async def scenario(app: Any, client: httpx.AsyncClient) -> None:
        for route in ("/generate", "/generate_stream"):
            r = await client.post(route, json={"inputs": "x"})
            assert r.status_code == 429, r.text
            assert r.json() == {"error": "the queue is full", "error_type": "overloaded"}
        r = await client.post("/", json={"inputs": "x", "stream": True})
        assert r.status_code == 429

    _serve(ScriptedEngine([Overloaded("the queue is full")]), scenario)

    async def unexpected(app: Any, client: httpx.AsyncClient) -> None:
        r = await client.post("/generate", json={"inputs": "x"})
        assert r.status_code == 500 and r.json()["error_type"] == "incomplete_generation"
        # an exception's text can name storage paths or internals: it goes to the log, never to the client
        assert "/data/secret" not in r.text and "RuntimeError" not in r.text
        r = await client.post("/generate_stream", json={"inputs": "x"})
        assert r.status_code == 500 and "/data/secret" not in r.text

    _serve(ScriptedEngine([RuntimeError("a bug reading /data/secret/adapter")]), unexpected)


def test_a_client_hanging_up_closes_its_generation() -> None:
    engine = ScriptedEngine(None)  # would stream forever

    async def scenario(app: Any, _: httpx.AsyncClient) -> None:
        request = json.dumps({"inputs": "My pet is a"}).encode()
        first_event = asyncio.Event()
        asked = False

        async def receive() -> dict[str, Any]:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": request, "more_body": False}
            await first_event.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                first_event.set()
                await asyncio.Event().wait()  # a stalled client: the server is stuck in send, its generator at yield

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},  # what uvicorn's HTTP/1.1 says
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/generate_stream",
            "raw_path": b"/generate_stream",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"host", b"engine")],
            "client": ("127.0.0.1", 1),
            "server": ("engine", 80),
        }
        await asyncio.wait_for(app(scope, receive, send), timeout=10)
        # checked here, not after the loop ends: asyncio.run closes leftover generators itself on the way out
        assert engine.closed == 1

    _serve(engine, scenario)
