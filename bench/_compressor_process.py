"""A real ``python -m compressor_service`` process on a local-directory store, for the benchmark and drill
scripts: started, waited for until ``/readyz`` answers 200, stopped on exit."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from soppu.cli.stack import Service, free_port

__all__ = ["compressor_process"]

REPO = Path(__file__).resolve().parents[1]
# One torch thread in the service: on 2 shared cores a second OpenMP thread made single jobs 10x slower at random.
TORCH_THREADS = 1
_START_TIMEOUT_S = 180.0


@contextmanager
def compressor_process(
    store: Path, admin_key: str, *, failpoints: str = "", **settings: str
) -> Iterator[tuple[Service, str]]:
    """(the process, its URL) for a compressor on ``store``; ``settings`` are SOPPU_COMPRESSOR_* values and
    ``failpoints`` arms :mod:`soppu.failpoints`. Its log lands beside the store."""
    port = free_port()
    env = {**os.environ, "SOPPU_STORE_URL": str(store), "SOPPU_ADMIN_KEY": admin_key, "SOPPU_FAILPOINTS": failpoints}
    env |= {"SOPPU_COMPRESSOR_DEVICE": "cpu", "SOPPU_COMPRESSOR_TORCH_THREADS": str(TORCH_THREADS)}
    # A killed compressor's leases (soppu.registry.leases) hold 2 s, not 30: the drills restart it at once.
    env |= {"SOPPU_COMPRESSOR_LEASE_TTL_S": "2"}
    env |= {f"SOPPU_COMPRESSOR_{k.upper()}": v for k, v in settings.items()}
    command = [sys.executable, "-m", "compressor_service", "--port", str(port), "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    service = Service(f"compressor-{failpoints or 'clean'}-{port}", command, env, f"{url}/readyz", cwd=REPO)
    service.start(store.parent)
    try:
        service.wait_healthy(_START_TIMEOUT_S)
        yield service, url
    finally:
        service.stop(timeout=30)
