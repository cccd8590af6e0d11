"""A backend that speaks as LoRAX 0.12.1 really does (read from its router, tag v0.12.1), for the gateway's wire
tests: an ASGI app run by uvicorn, one process per stub.

    python -m tests.gateway_service.lorax_stub --port 8099    # from the repository root

What makes it LoRAX rather than the engine:

- Events are written ``data:{...}`` with no space (axum's ``Event``), and every stream opens with a keep-alive
  comment ``:`` (what LoRAX sends while a request queues: ``KeepAlive::default()``, router/src/server.rs:193).
- Every error of a stream comes as an event ``{"error", "error_type"}`` after the 200 (server.rs:966-1147);
  outside a stream it has its status (server.rs:1586-1607).
- OpenAI chunks say ``"model":"null"``, one chunk per generated token, the last with the finish reason and the
  usage (router/src/lib.rs:1268-1308, :1383-1428).
- ``/v1/completions`` takes ``prompt`` as a string and ``stop`` as a list only; ``/v1/chat/completions`` takes
  ``stop`` as a list only (lib.rs:972-985, :676); anything else is axum's plain-text 422.
- ``/health`` runs a generation through the queue (server.rs:464-566): ``POST /stub/mode`` makes it slow
  (``{"health": "slow"}``, 5 s) or answer 500 for an overload (``"overloaded"``); ``/info`` stays cheap unless
  ``{"info": false}`` takes it away (404, as a backend without the route).

The text generated is ``"{adapter_source}|{adapter_id}"`` (``base`` without an adapter), streamed as one ``t`` per
token with the whole text on the last event; ``max_new_tokens`` / ``max_tokens`` tokens (default 4).

Prompt hooks: ``lorax:busy`` is overloaded; ``lorax:424-v1`` fails to load an adapter id naming version 1 (one a
refit retired); ``lorax:invalid`` fails validation; ``lorax:error-after`` sends one token, then a generation error;
``lorax:dies`` sends a stream's headers, then the connection breaks before any event.
``GET /stub/requests`` returns the generation requests received (path and body), ``GET /stub/probes`` the
health probes counted by route, ``POST /stub/reset`` clears both and the modes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.processes import ServiceProcess, start_service

__all__ = ["create_app", "start_lorax_stub"]

_REPO_ROOT = Path(__file__).resolve().parents[2]  # the cwd of `python -m tests.gateway_service.lorax_stub`
_SLOW_HEALTH_S = 5.0
_GENERATION_PATHS = ("/generate", "/generate_stream", "/", "/v1/completions", "/v1/chat/completions")
_ERRORS = {  # hook -> (status outside a stream, LoRAX's error body)
    "lorax:busy": (429, {"error": "Model is overloaded", "error_type": "overloaded"}),
    "lorax:424-v1": (
        424,
        {
            "error": "Request failed during generation: Server error: no adapter at that prefix",
            "error_type": "generation",
        },
    ),
    "lorax:invalid": (
        422,
        {"error": "Input validation error: `max_new_tokens` must be strictly positive", "error_type": "validation"},
    ),
}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()  # serde's compact JSON


def _event(value: Any) -> bytes:
    return b"data:" + (value if isinstance(value, bytes) else _dumps(value)) + b"\n\n"


class _State:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.probes: Counter[str] = Counter()
        self.health = "ok"
        self.info = True


def _prompt(path: str, body: dict[str, Any]) -> str:
    if path == "/v1/chat/completions":
        messages = body.get("messages") or [{}]
        return str(messages[-1].get("content", ""))
    return str(body.get("prompt") if path == "/v1/completions" else body.get("inputs"))


def _deserialize_error(path: str, body: dict[str, Any]) -> str | None:
    """What axum's Json extractor refuses (serde: ``prompt: String``, ``stop: Vec<String>``)."""
    if path == "/v1/completions" and not isinstance(body.get("prompt"), str):
        return "prompt: invalid type: sequence, expected a string"
    stop = body.get("stop", [])
    if path.startswith("/v1/") and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        return "stop: invalid type: string, expected a sequence"
    return None


def _token_events(n: int, text: str) -> list[bytes]:
    events = []
    for i in range(n):
        last = i == n - 1
        details = {"finish_reason": "length", "prompt_tokens": 3, "generated_tokens": n, "seed": None}
        token = {"id": i, "text": "t", "logprob": -0.1, "special": False, "skipped": False}
        events.append(
            _event({"token": token, "generated_text": text if last else None, "details": details if last else None})
        )
    return events


def _openai_chunks(n: int, chat: bool) -> list[bytes]:
    events = []
    for i in range(n):
        last = i == n - 1
        finish = "length" if last else None
        usage = {
            "prompt_tokens": 3 if last else 0,
            "total_tokens": 3 + n if last else 0,
            "completion_tokens": n if last else 0,
        }
        if chat:
            choice = {"index": 0, "delta": {"role": "assistant", "content": "t"}, "finish_reason": finish}
            chunk = {
                "id": "null",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "null",
                "choices": [choice],
            }
            if last:  # chat chunks carry usage only once the details exist (lib.rs:1383-1401)
                chunk["usage"] = usage
        else:
            choice = {"index": 0, "text": "t", "logprobs": None, "finish_reason": finish}
            chunk = {"id": "null", "object": "text_completion", "created": 0, "model": "null", "choices": [choice]}
            chunk["usage"] = usage
        events.append(_event(chunk))
    return [*events, _event(b"[DONE]")]


def _answer(path: str, body: dict[str, Any], text: str, n: int) -> Response:
    """A non-stream success, shaped per route."""
    usage = {"prompt_tokens": 3, "total_tokens": 3 + n, "completion_tokens": n}
    if path == "/v1/completions":
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
        return JSONResponse({"id": "null", "object": "text_completion", "created": 0, "model": "null",
                             "choices": [choice], "usage": usage})  # fmt: skip
    if path == "/v1/chat/completions":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
        return JSONResponse({"id": "null", "object": "text_completion", "created": 0, "model": body.get("model"),
                             "choices": [choice], "usage": usage, "system_fingerprint": "0.12.1-stub"})  # fmt: skip
    details = {"finish_reason": "length", "prompt_tokens": 3, "generated_tokens": n, "seed": None, "prefill": [],
               "tokens": [{"id": i, "text": "t", "logprob": -0.1, "special": False} for i in range(n)]}  # fmt: skip
    result = {"generated_text": text, "details": details}
    headers = {"x-generated-tokens": str(n), "x-prompt-tokens": "3", "x-total-tokens": str(n + 3)}
    return JSONResponse([result] if path == "/" else result, headers=headers)


def _stream(events: list[bytes] | None) -> StreamingResponse:
    """A 200 SSE response over ``events``; None: the headers, then the connection breaks (uvicorn closes it when
    the app fails after its response started)."""

    async def body() -> AsyncIterator[bytes]:
        if events is None:
            raise RuntimeError("the stub's backend died before its first event (lorax:dies)")
        yield b":\n\n"
        for event in events:
            yield event

    return StreamingResponse(body(), media_type="text/event-stream")


async def _generate(request: Request) -> Response:
    state: _State = request.app.state.stub
    path = request.url.path
    body = json.loads(await request.body() or b"{}")
    state.requests.append({"path": path, "body": body})
    refused = _deserialize_error(path, body)
    if refused is not None:  # axum's JsonRejection: 422, text
        return PlainTextResponse(f"Failed to deserialize the JSON body into the target type: {refused}", 422)
    openai = path.startswith("/v1/")
    params = body if openai else body.get("parameters") or {}
    adapter = str(body.get("model") if openai else params.get("adapter_id") or "")
    text = f"{params.get('adapter_source')}|{adapter}" if adapter else "base"
    n = int(params.get("max_tokens" if openai else "max_new_tokens") or 4)
    stream = path == "/generate_stream" or bool(body.get("stream"))
    prompt = _prompt(path, body)
    hook = _ERRORS.get(prompt)
    if hook is not None and (prompt != "lorax:424-v1" or adapter.endswith("/v00000001")):
        status, error = hook
        return _stream([_event(error)]) if stream else JSONResponse(error, status)
    if not stream:
        return _answer(path, body, text, n)
    if prompt == "lorax:dies":
        return _stream(None)
    events = _openai_chunks(n, path.endswith("/chat/completions")) if openai else _token_events(n, text)
    if prompt == "lorax:error-after":
        events = [
            events[0],
            _event({"error": "Request failed during generation: CUDA error", "error_type": "generation"}),
        ]
    return _stream(events)


async def _info(request: Request) -> Response:
    state: _State = request.app.state.stub
    state.probes["info"] += 1
    if not state.info:
        return Response(status_code=404)  # axum's answer for a route it does not have
    return JSONResponse({"model_id": "stub-base", "model_dtype": "torch.float16", "version": "0.12.1"})


async def _health(request: Request) -> Response:
    state: _State = request.app.state.stub
    state.probes["health"] += 1
    if state.health == "slow":
        await asyncio.sleep(_SLOW_HEALTH_S)
    elif state.health == "overloaded":
        return JSONResponse({"error": "Model is overloaded", "error_type": "overloaded"}, 500)
    return Response(status_code=200)


async def _mode(request: Request) -> Response:
    state: _State = request.app.state.stub
    mode = await request.json()
    state.health = mode.get("health", state.health)
    state.info = mode.get("info", state.info)
    return JSONResponse({"health": state.health, "info": state.info})


async def _requests(request: Request) -> Response:
    return JSONResponse(request.app.state.stub.requests)


async def _probes(request: Request) -> Response:
    return JSONResponse(dict(request.app.state.stub.probes))


async def _reset(request: Request) -> Response:
    request.app.state.stub = _State()
    return JSONResponse({})


def create_app() -> Starlette:
    routes = [Route(path, _generate, methods=["POST"]) for path in _GENERATION_PATHS]
    routes += [
        Route("/info", _info),
        Route("/health", _health),
        Route("/stub/mode", _mode, methods=["POST"]),
        Route("/stub/requests", _requests),
        Route("/stub/probes", _probes),
        Route("/stub/reset", _reset, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.stub = _State()
    return app


def start_lorax_stub(log: Path) -> ServiceProcess:
    """The stub as a process on a free port, ready once ``/stub/probes`` answers (not /info or /health: those
    are counted)."""
    return start_service(
        lambda port: [sys.executable, "-m", "tests.gateway_service.lorax_stub", "--port", str(port)],
        log=log,
        ready_path="/stub/probes",
        timeout_s=30,
        cwd=_REPO_ROOT,
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
