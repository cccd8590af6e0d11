"""``python -m gateway_service``: serve the gateway with uvicorn. Flags override ``SOPPU_GATEWAY_*`` settings."""

from __future__ import annotations

import argparse
import logging

import uvicorn

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
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    flags = {
        "host": args.host,
        "port": args.port,
        "store_url": args.store_url,
        "backends": args.backends,
        "no_adapter": args.no_adapter,
    }
    # Init arguments take precedence over the environment in pydantic-settings.
    settings = GatewaySettings(**{name: value for name, value in flags.items() if value is not None})
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every upstream request at INFO: our access line already says which backend answered.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Our own access line carries the request id; uvicorn's would only repeat it without. Keep-alive: uvicorn's
    # default (5 s) is what client pools keep idle connections for (httpx: 5 s), so a client reusing one as
    # the gateway closes it lost the request; the gateway now outlasts them.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=False,
        timeout_keep_alive=settings.keep_alive_s,
    )


if __name__ == "__main__":
    main()
