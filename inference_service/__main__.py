"""``python -m inference_service``: serve the engine with uvicorn. Flags override ``SOPPU_ENGINE_*`` settings."""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from soppu_web.serve import given, uvicorn_options

from .app import create_app
from .settings import EngineSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inference_service",
        description="SOPPU's LoRAX-compatible inference engine: one base model, one LoRA adapter per request "
        "(s3://bucket/prefix or a local directory), batched across adapters. Every setting can also come from "
        "SOPPU_ENGINE_<NAME> (e.g. SOPPU_ENGINE_MAX_BATCH_SIZE); flags given here win. S3 adapters are read "
        "with S3_ENDPOINT_URL and AWS_* credentials, as LoRAX reads them.",
    )
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8082)")
    parser.add_argument("--model", type=Path, help="base model directory (default: the checkout's example base)")
    parser.add_argument("--model-id", help="name reported by /info and accepted as OpenAI `model` for the base")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to run (default auto)")
    parser.add_argument(
        "--local-adapter-root",
        dest="local_adapter_roots",
        type=Path,
        action="append",
        help="a directory local adapters may come from (repeat for more; default: local adapters are refused)",
    )
    parser.add_argument(
        "--s3-bucket",
        dest="s3_buckets",
        action="append",
        help="an S3 bucket (or fnmatch pattern) adapters may come from (repeat for more; default: the bucket of "
        "SOPPU_STORE_URL)",
    )
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    flags = {
        "host": args.host,
        "port": args.port,
        "model": args.model,
        "model_id": args.model_id,
        "device": args.device,
        "local_adapter_roots": args.local_adapter_roots,
        "s3_buckets": args.s3_buckets,
    }
    settings = EngineSettings(**given(flags))
    uvicorn.run(create_app(settings), **uvicorn_options(settings, args.log_level))


if __name__ == "__main__":
    main()
