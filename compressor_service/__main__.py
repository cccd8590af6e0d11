"""``python -m compressor_service``: serve the compressor with uvicorn. Flags override ``SOPPU_COMPRESSOR_*``."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from soppu_web.serve import given, uvicorn_options

from .app import create_app
from .settings import CompressorSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m compressor_service",
        description="SOPPU's compressor: upload a PEFT LoRA adapter per user over HTTP; it is validated, stored as "
        "a new version, compressed onto its cohort's shared basis by a background job, checked by the quality "
        "gate and published (export for LoRAX, core for our engine, manifest, pointer). Every setting can also "
        "come from SOPPU_COMPRESSOR_<NAME> (e.g. SOPPU_COMPRESSOR_RANK=16, SOPPU_COMPRESSOR_WORKERS=2, "
        "SOPPU_COMPRESSOR_GATEWAY_URLS='[\"http://127.0.0.1:8080\"]'); flags given here win. The store is "
        "SOPPU_STORE_URL (s3://bucket, with S3_ENDPOINT_URL and AWS_* credentials as boto3 reads them, or a "
        "directory); the admin key is SOPPU_ADMIN_KEY. API docs: http://HOST:PORT/docs.",
    )
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8081)")
    parser.add_argument("--store-url", help="s3://bucket or a directory (default .cache/store)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where jobs run (default auto)")
    parser.add_argument("--base-model", help="model directory for the behaviour check, or 'none'")
    parser.add_argument("--workers", type=int, help="jobs run at once (default 1; 0 runs none)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    flags = {
        "host": args.host,
        "port": args.port,
        "store_url": args.store_url,
        "device": args.device,
        "base_model": args.base_model,
        "workers": args.workers,
    }
    settings = CompressorSettings(**given(flags))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), **uvicorn_options(settings, args.log_level))


if __name__ == "__main__":
    main()
