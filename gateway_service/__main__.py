"""``python -m gateway_service``: serve the gateway with uvicorn. Flags override ``SOPPU_GATEWAY_*`` settings.

``--workers N`` runs N gateway processes on the one port (uvicorn's supervisor binds it and the kernel hands
each connection to one of them): one process is one core's worth of relaying. Each process keeps its own key
and resolution caches, upstream connections and in-flight caps; per-user rate limits are per process too unless
they are kept in Redis (``SOPPU_GATEWAY_REDIS_URL``). The workers are started by name
(:func:`worker_app`), so the launch's flags reach them through the environment (``SOPPU_GATEWAY_LAUNCH``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import uvicorn
from fastapi import FastAPI

from soppu_web.serve import given, uvicorn_options

from .app import create_app
from .settings import BackendConfig, BackendKind, GatewaySettings


def _backend(text: str) -> BackendConfig:
    kind, sep, url = text.partition("=")
    if not sep:
        return BackendConfig(url=text)
    if kind not in BackendKind.__members__.values():
        raise argparse.ArgumentTypeError(f"backend kind must be one of {[k.value for k in BackendKind]}, got {kind!r}")
    return BackendConfig(url=url, kind=BackendKind(kind))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway_service",
        description="SOPPU's gateway: authenticates API keys, resolves each user's current adapter from the "
        "bucket, and routes LoRAX and OpenAI-style requests to LoRAX-compatible backends with per-user limits. "
        "Every setting can also come from SOPPU_GATEWAY_<NAME> (e.g. SOPPU_GATEWAY_NO_ADAPTER=base, "
        'SOPPU_GATEWAY_BACKENDS=\'[{"url": "http://127.0.0.1:8082", "kind": "engine"}]\'); flags given here win. '
        "The bucket is SOPPU_STORE_URL (s3://bucket with S3_ENDPOINT_URL and AWS_* credentials, or a directory); "
        "the admin key is SOPPU_ADMIN_KEY.",
    )
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8080)")
    parser.add_argument("--store", dest="store_url", help="the bucket: s3://bucket or a directory (SOPPU_STORE_URL)")
    parser.add_argument(
        "--backend",
        dest="backends",
        action="append",
        type=_backend,
        metavar="[KIND=]URL",
        help="a backend, e.g. engine=http://127.0.0.1:8082 or lorax=http://lorax:80 (repeatable; kind "
        "defaults to engine)",
    )
    parser.add_argument(
        "--no-adapter",
        choices=["base", "404"],
        help="a user without a `default` adapter gets the base model or 404 (default 404)",
    )
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes sharing the port (default 1); each keeps its own caches and in-flight caps, and "
        "its own per-user limits unless SOPPU_GATEWAY_REDIS_URL shares them",
    )
    return parser


_LAUNCH_ENV = "SOPPU_GATEWAY_LAUNCH"  # the flags and log level, for worker processes


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every upstream request at INFO: our access line already says which backend answered.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def worker_app() -> FastAPI:
    """The app of one worker process (``--workers N``): the launch's settings flags and log level come from the
    environment the supervisor passed on."""
    launch = json.loads(os.environ.get(_LAUNCH_ENV, "{}"))
    _configure_logging(launch.get("log_level", "info"))
    return create_app(GatewaySettings(**launch.get("flags", {})))


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    flags = {
        "host": args.host,
        "port": args.port,
        "store_url": args.store_url,
        "backends": args.backends,
        "no_adapter": args.no_adapter,
    }
    overrides = given(flags)
    settings = GatewaySettings(**overrides)
    if args.workers < 1:
        raise SystemExit(f"--workers must be at least 1, got {args.workers}")
    # Our own access line carries the request id; uvicorn's would only repeat it without.
    options = {**uvicorn_options(settings, args.log_level), "access_log": False}
    if args.workers == 1:
        _configure_logging(args.log_level)
        uvicorn.run(create_app(settings), **options)
        return
    if overrides.get("backends"):
        overrides["backends"] = [backend.model_dump(mode="json") for backend in overrides["backends"]]
    os.environ[_LAUNCH_ENV] = json.dumps({"flags": overrides, "log_level": args.log_level})
    uvicorn.run("gateway_service.__main__:worker_app", factory=True, workers=args.workers, **options)


if __name__ == "__main__":
    main()
