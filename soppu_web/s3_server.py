"""moto's standalone S3 server with atomic writes: the S3 server of the tests and of the local stack.

moto checks a conditional PUT's ``If-Match``/``If-None-Match`` and then writes, with no lock between the two
(``moto/s3/responses.py``, ``put_object``), and its server is threaded: two replicas racing on one pointer can
both pass the check, so an update is lost. S3 and MinIO decide a conditional write atomically, and SOPPU's
replicas rely on that (issue 15). This server runs moto's own WSGI application with every request that changes
the bucket (anything but GET, HEAD and OPTIONS) taken one at a time; reads stay concurrent.

    python -m soppu_web.s3_server -H 127.0.0.1 -p 5000
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

_READS = frozenset({"GET", "HEAD", "OPTIONS"})

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def serialized_writes(app: WsgiApp) -> WsgiApp:
    """``app`` with its writes one at a time; each write's body is produced under the lock."""
    lock = threading.Lock()

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") in _READS:
            return app(environ, start_response)
        with lock:
            result = app(environ, start_response)
            try:
                return [b"".join(result)]
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()

    return wrapped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-H", "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("-p", "--port", type=int, default=5000, help="port (default 5000)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto's own server does
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, serialized_writes(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
