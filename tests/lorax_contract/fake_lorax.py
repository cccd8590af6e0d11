"""A fake LoRAX 0.12.1 for contract tests: its REST API, its errors and its adapter handling, reproduced from a
reading of its source (tag ``v0.12.1``; paths relative to its tree; none of its code is copied), with our own
engine (:mod:`inference_service.engine`, in-process, on the CPU) doing the generation.

Run it as a process (how the tests start it, see ``conftest.py``)::

    python -m tests.lorax_contract.fake_lorax --port 8080 --model DIR [--adapter-source s3] \\
        [--max-concurrent-requests N] [--disable-sgmv] [--huggingface-hub-cache DIR]

with ``S3_ENDPOINT_URL`` and ``AWS_*`` in the environment for S3 adapters, or build it in-process with
:func:`create_app`. This module builds the app and launches it; the HTTP side
(router/src/server.rs, lib.rs, infer.rs, health.rs) is :mod:`fake_lorax_state` (the permit, one generation),
:mod:`fake_lorax_responses`, :mod:`fake_lorax_routes` and :mod:`fake_lorax_openai`; request parsing is
:mod:`fake_lorax_schema`'s, validation :mod:`fake_lorax_validation`'s, adapter download, cache and LoRAX's weight
arithmetic :mod:`fake_lorax_adapters`'.

Reproduced (each at its place below): the routes ``POST /generate``, ``/generate_stream``, ``/`` (and
``/invocations``), ``/v1/completions``, ``/v1/chat/completions``, ``GET /health`` (and ``/``, ``/ping``),
``/info``, ``POST /tokenize``; response bodies and headers; errors as ``{"error", "error_type"}`` with LoRAX's
statuses, and inside a stream as an event after HTTP 200; events written ``data:{...}`` with no space; OpenAI
chunks with ``"model":"null"``; the ``--max-concurrent-requests`` permit (429 ``Model is overloaded``).

Not reproduced (accepted after validation, then ignored): ``typical_p``, ``frequency_penalty``,
``presence_penalty``, ``watermark``, ``truncate``, ``return_k_alternatives``, ``response_format``, tools,
``merged_adapters``; adapter sources other than ``s3``; ``/metrics``; SSE keep-alive comments.

Test hooks that LoRAX does not have, under ``/fake/``: ``POST /fake/offload`` (unload every adapter, as LoRAX's
adapter cycling does), ``POST /fake/hold`` and ``/fake/release`` (take or give back one concurrency permit, so an
overload is reachable without timing), ``GET /fake/state`` (the S3 keys downloaded so far, the cache directory).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from inference_service.engine import Engine, EngineConfig, SourceRules
from tests.lorax_contract.fake_lorax_adapters import AdapterLoader, num_layers
from tests.lorax_contract.fake_lorax_openai import chat_completions, completions
from tests.lorax_contract.fake_lorax_routes import (
    compat_generate,
    fake_hold,
    fake_offload,
    fake_release,
    fake_state,
    generate,
    generate_stream,
    health,
    info,
    lorax_endpoint,
    tokenize,
)
from tests.lorax_contract.fake_lorax_state import FakeLorax, FakeSettings
from tests.lorax_contract.fake_lorax_validation import Limits
from tests.lorax_contract.lorax_semantics import LoraxModel

__all__ = ["FakeSettings", "create_app", "main"]


# --- the app -----------------------------------------------------------------------------------------------------


def _limits(settings: FakeSettings) -> Limits:
    config = json.loads((settings.model / "config.json").read_bytes())
    total = settings.max_total_tokens or int(config.get("max_position_embeddings", 2048))
    return Limits(
        max_input_length=settings.max_input_length or total - 1,
        max_total_tokens=total,
        max_stop_sequences=settings.max_stop_sequences,
        max_best_of=settings.max_best_of,
    )


def _build(settings: FakeSettings, work: Path) -> FakeLorax:
    limits = _limits(settings)
    engine_dir = work / "engine-adapters"
    engine_dir.mkdir(parents=True, exist_ok=True)
    engine = Engine(
        EngineConfig(
            model_path=settings.model,
            device="cpu",
            max_queue=1 << 16,  # the fake's permit is the only limit, as in LoRAX
            max_input_length=limits.max_input_length,
            max_total_tokens=limits.max_total_tokens,
            model_id=settings.model_id or str(settings.model),
            max_input_chars=1 << 24,
            sources=SourceRules((), (engine_dir,)),
        )
    )
    shapes = dict(engine.runner.shapes.modules)
    model = LoraxModel(num_layers=num_layers(shapes), dtype=engine.runner.dtype, sgmv=not settings.disable_sgmv)
    cache = settings.huggingface_hub_cache or work / "hub-cache"
    loader = AdapterLoader(cache, engine_dir, model, settings.model_id or str(settings.model), shapes)
    return FakeLorax(settings, engine, loader, limits)


def create_app(settings: FakeSettings) -> Starlette:
    """The fake LoRAX over ``settings``; the engine loads and starts in the lifespan."""
    work = Path(tempfile.mkdtemp(prefix="fake-lorax-"))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        fake = await asyncio.to_thread(_build, settings, work)
        await fake.engine.start()
        app.state.fake = fake
        try:
            yield
        finally:
            await fake.engine.stop()

    routes = [
        Route("/", lorax_endpoint(compat_generate), methods=["POST"]),
        Route("/invocations", lorax_endpoint(compat_generate), methods=["POST"]),  # server.rs:1486
        Route("/generate", lorax_endpoint(generate), methods=["POST"]),
        Route("/generate_stream", lorax_endpoint(generate_stream), methods=["POST"]),
        Route("/v1/completions", lorax_endpoint(completions), methods=["POST"]),
        Route("/v1/chat/completions", lorax_endpoint(chat_completions), methods=["POST"]),
        Route("/", lorax_endpoint(health), methods=["GET"]),  # server.rs:1489
        Route("/health", lorax_endpoint(health), methods=["GET"]),
        Route("/ping", lorax_endpoint(health), methods=["GET"]),
        Route("/info", lorax_endpoint(info), methods=["GET"]),
        Route("/tokenize", lorax_endpoint(tokenize), methods=["POST"]),
        Route("/fake/offload", lorax_endpoint(fake_offload), methods=["POST"]),
        Route("/fake/hold", lorax_endpoint(fake_hold), methods=["POST"]),
        Route("/fake/release", lorax_endpoint(fake_release), methods=["POST"]),
        Route("/fake/state", lorax_endpoint(fake_state), methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="A fake LoRAX 0.12.1 on the CPU over SOPPU's engine (tests only).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--model", type=Path, required=True, help="the base model directory (LoRAX's --model-id)")
    parser.add_argument("--model-id", help="the id /info reports (default: --model as given)")
    parser.add_argument("--adapter-source", default="hub", help="the source of a request that names none")
    parser.add_argument("--max-concurrent-requests", type=int, default=128)
    parser.add_argument("--max-best-of", type=int, default=2)
    parser.add_argument("--max-stop-sequences", type=int, default=4)
    parser.add_argument("--max-input-length", type=int)
    parser.add_argument("--max-total-tokens", type=int)
    parser.add_argument("--disable-sgmv", action="store_true", help="no punica kernels: ranks are not padded")
    parser.add_argument("--huggingface-hub-cache", type=Path, help="the adapter cache (LoRAX's /data)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = FakeSettings(
        model=args.model,
        model_id=args.model_id,
        adapter_source=args.adapter_source,
        max_concurrent_requests=args.max_concurrent_requests,
        max_best_of=args.max_best_of,
        max_stop_sequences=args.max_stop_sequences,
        max_input_length=args.max_input_length,
        max_total_tokens=args.max_total_tokens,
        disable_sgmv=args.disable_sgmv,
        huggingface_hub_cache=args.huggingface_hub_cache,
    )
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", timeout_keep_alive=75)


if __name__ == "__main__":
    sys.exit(main())
