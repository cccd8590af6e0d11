"""A minimal LoRAX-shaped backend: plain asyncio HTTP/1.1 (keep-alive, no framework), so that a benchmark of the
gateway measures the gateway and not the backend, and so that tests can see exactly what a backend receives.

    python tests/support/stub_backend.py --port 8099 [--delay-ms 0] [--token-delay-ms 0] [--model-id stub] \
        [--keep-alive-s 0]

Routes: ``GET /health`` (200, or 503 after ``POST /stub/health?ok=0``), ``GET /info``, and LoRAX's generation
routes ``POST /generate``, ``/generate_stream``, ``/`` (compat), ``/v1/completions``, ``/v1/chat/completions``
(JSON or SSE). The generated text is ``"{adapter_source}|{adapter_id}"`` (``base`` without an adapter), one token
per event when streaming, ``max_new_tokens`` (or ``max_tokens``) of them, default 4.

Test hooks: ``inputs``/``prompt`` ``"stub:429"`` answers 429 overloaded, ``"stub:422"`` 422, ``"stub:424-v1"`` 424 when
the adapter id names version 1 (a version a refit retired), ``"stub:error"``
streams one token then LoRAX's error event, ``"stub:slow"`` streams a token every 50 ms (up to 400). ``GET
/stub/requests`` returns the last 200 generation requests as received (method, path, headers, body), ``GET
/stub/stats`` the counters (requests; streams started, finished, cancelled by the client), ``POST /stub/reset``
clears both.

``--keep-alive-s`` closes a connection idle that long between requests, as uvicorn does (its default is 5 s), so
a gateway that reuses idle connections can be seen racing the backend's close; 0 (the default) keeps them open.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

_REASONS = {200: "OK", 404: "Not Found", 411: "Length Required", 422: "Unprocessable Entity", 429: "Too Many"}
_REASONS |= {503: "Service Unavailable"}
_SLOW_TOKENS, _SLOW_DELAY_S = 400, 0.05
_GENERATION_ROUTES = frozenset({"/generate", "/generate_stream", "/", "/v1/completions", "/v1/chat/completions"})


@dataclass
class Stub:
    delay_s: float
    token_delay_s: float
    model_id: str
    keep_alive_s: float = 0.0
    healthy: bool = True
    requests: collections.deque[dict[str, Any]] = field(default_factory=lambda: collections.deque(maxlen=200))
    stats: collections.Counter[str] = field(default_factory=collections.Counter)


def _head(status: int, content_type: str, extra: str) -> bytes:
    return f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-type: {content_type}\r\n{extra}".encode()


def _json(writer: asyncio.StreamWriter, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(_head(status, "application/json", f"{extra}content-length: {len(data)}\r\n\r\n") + data)


def _adapter_text(params: dict[str, Any]) -> str:
    adapter = params.get("adapter_id")
    return f"{params.get('adapter_source')}|{adapter}" if adapter else "base"


def _token_event(i: int, text: str | None, n: int) -> dict[str, Any]:
    token = {"id": i, "text": "t", "logprob": -0.1, "special": False}
    details = {"finish_reason": "length", "prompt_tokens": 3, "generated_tokens": n, "seed": None} if text else None
    return {"token": token, "generated_text": text, "details": details}


def _openai_chunk(body: dict[str, Any], chat: bool, text: str, finish: str | None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
    choice |= {"delta": {"content": text}} if chat else {"text": text}
    kind = "chat.completion.chunk" if chat else "text_completion"
    return {"id": "stub", "object": kind, "created": 0, "model": body.get("model"), "choices": [choice]}


async def _stream(
    stub: Stub, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, events: list[bytes], delay_s: float
) -> bool:
    """Send ``events`` as chunked SSE, ``delay_s`` apart; False when the client went away first."""
    stub.stats["streams_started"] += 1
    writer.write(_head(200, "text/event-stream", "transfer-encoding: chunked\r\n\r\n"))
    for event in events:
        if delay_s:
            await asyncio.sleep(delay_s)
        if reader.at_eof() or writer.is_closing():  # the client closed its end: stop generating, as LoRAX does
            stub.stats["streams_cancelled"] += 1
            return False
        frame = b"data: " + event + b"\n\n"
        writer.write(f"{len(frame):x}\r\n".encode() + frame + b"\r\n")
        try:
            await writer.drain()
        except ConnectionError:
            stub.stats["streams_cancelled"] += 1
            return False
    writer.write(b"0\r\n\r\n")
    stub.stats["streams_finished"] += 1
    return True


async def _generate(
    stub: Stub, path: str, body: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool:
    openai = path.startswith("/v1/")
    params = body if openai else body.get("parameters") or {}
    prompt = str(body.get("prompt") or body.get("inputs") or (body.get("messages") or [{}])[-1].get("content", ""))
    n = int(params.get("max_tokens" if openai else "max_new_tokens") or 4)
    if prompt == "stub:429":
        _json(writer, 429, {"error": "queue full", "error_type": "overloaded"})
        return True
    if prompt == "stub:422":
        _json(writer, 422, {"error": "bad input", "error_type": "validation"})
        return True
    if prompt == "stub:424-v1" and str(params.get("adapter_id") or body.get("model")).endswith("/v00000001"):
        _json(writer, 424, {"error": "no adapter at that prefix", "error_type": "generation"})  # a retired version
        return True
    if stub.delay_s:
        await asyncio.sleep(stub.delay_s)
    text = _adapter_text(params) if not openai else str(body.get("model"))
    stream = path == "/generate_stream" or bool(body.get("stream"))
    if not stream:
        if openai:
            chat = path.endswith("/chat/completions")
            choice: dict[str, Any] = {"index": 0, "finish_reason": "length", "logprobs": None}
            choice |= {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            usage = {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n}
            answer = {"id": "stub", "object": "x", "created": 0, "model": body.get("model"), "choices": [choice]}
            _json(writer, 200, answer | {"usage": usage})
            return True
        result = {"generated_text": text, "details": None}
        headers = {"x-generated-tokens": str(n), "x-prompt-tokens": "3", "x-total-tokens": str(n + 3)}
        _json(writer, 200, [result] if path == "/" else result, headers)
        return True
    delay_s = stub.token_delay_s
    if prompt == "stub:slow":
        n, delay_s = _SLOW_TOKENS, _SLOW_DELAY_S
    if openai:
        chat = path.endswith("/chat/completions")
        events = [json.dumps(_openai_chunk(body, chat, "t", None)).encode() for _ in range(n)]
        events += [json.dumps(_openai_chunk(body, chat, "", "length")).encode(), b"[DONE]"]
    else:
        events = [json.dumps(_token_event(i, text if i == n - 1 else None, n)).encode() for i in range(n)]
    if prompt == "stub:error":
        events = [*events[:1], json.dumps({"error": "the forward pass failed", "error_type": "generation"}).encode()]
    return await _stream(stub, reader, writer, events, delay_s)


async def _dispatch(
    stub: Stub, method: str, path: str, headers: dict[str, str], raw: bytes, reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> bool:  # fmt: skip
    route, _, query = path.partition("?")
    if method == "GET" and route == "/health":
        if stub.healthy:
            writer.write(_head(200, "text/plain", "content-length: 0\r\n\r\n"))
        else:
            _json(writer, 503, {"error": "unhealthy", "error_type": "healthcheck"})
        return True
    if method == "GET" and route == "/info":
        _json(writer, 200, {"model_id": stub.model_id, "version": "stub"})
        return True
    if route == "/stub/requests":
        _json(writer, 200, list(stub.requests))
        return True
    if route == "/stub/stats":
        _json(writer, 200, dict(stub.stats))
        return True
    if route == "/stub/reset":
        stub.requests.clear()
        stub.stats.clear()
        _json(writer, 200, {})
        return True
    if route == "/stub/health":
        stub.healthy = query != "ok=0"
        _json(writer, 200, {"healthy": stub.healthy})
        return True
    if method != "POST" or route not in _GENERATION_ROUTES:
        _json(writer, 404, {"error": f"no route {method} {route}", "error_type": "not_found"})
        return True
    body = json.loads(raw or b"{}")
    stub.stats["requests"] += 1
    stub.requests.append({"method": method, "path": route, "headers": headers, "body": body})
    return await _generate(stub, route, body, reader, writer)


async def _serve_connection(stub: Stub, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                async with asyncio.timeout(stub.keep_alive_s or None):
                    head = await reader.readuntil(b"\r\n\r\n")
            except TimeoutError:
                break  # idle past the keep-alive: close, as uvicorn does
            lines = head[:-4].decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", ""):
                _json(writer, 411, {"error": "send a content-length", "error_type": "validation"})
                break
            length = int(headers.get("content-length", "0"))
            raw = await reader.readexactly(length) if length else b""
            keep = await _dispatch(stub, method, path, headers, raw, reader, writer)
            await writer.drain()
            if not keep or headers.get("connection", "").lower() == "close":
                break
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def serve(host: str, port: int, stub: Stub) -> None:
    server = await asyncio.start_server(lambda r, w: _serve_connection(stub, r, w), host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="simulated generation time per request")
    parser.add_argument("--token-delay-ms", type=float, default=0.0, help="pause before each streamed event")
    parser.add_argument("--model-id", default="stub")
    parser.add_argument("--keep-alive-s", type=float, default=0.0, help="close connections idle this long (0: never)")
    args = parser.parse_args()
    stub = Stub(args.delay_ms / 1e3, args.token_delay_ms / 1e3, args.model_id, args.keep_alive_s)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, stub))


if __name__ == "__main__":
    main()
