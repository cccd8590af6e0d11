"""Start a service as a real process on a free port, wait until it answers HTTP, stop it; shared by the
fixtures of every service's tests (moto, the inference engine, and later the compressor and the gateway).

A failed start raises with the tail of the process's log, so the cause is in the test report.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from soppu.cli.stack import free_port, stop_process

__all__ = ["MOTO_ENV", "ServiceProcess", "answers_http", "free_port", "serving", "start_service", "stop_process"]

# boto3's default credential chain for a process that talks to the tests' moto server (moto takes any).
MOTO_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

_START_ATTEMPTS = 3  # a free port is only free until someone else takes it; on a lost race, try another


def answers_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP status means the server is up
    except OSError:
        return False


@dataclass
class ServiceProcess:
    proc: subprocess.Popen[bytes]
    url: str  # http://127.0.0.1:PORT
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc)


def start_service(
    command: Callable[[int], list[str]],
    *,
    log: Path,
    ready_path: str = "/health",
    env: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
    cwd: Path | None = None,
) -> ServiceProcess:
    """Run ``command(port)`` with output to ``log`` until ``GET ready_path`` answers with any HTTP status."""
    for _ in range(_START_ATTEMPTS):
        port = free_port()
        with log.open("ab") as out:
            proc = subprocess.Popen(
                command(port),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                cwd=cwd,
            )
        service = ServiceProcess(proc, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            if answers_http(service.url + ready_path):
                return service
            time.sleep(0.1)
        service.stop()
    raise RuntimeError(f"{command(0)[:3]} did not start; see {log}:\n{service.log_tail(2000)}")


@contextmanager
def serving(service: ServiceProcess, name: str) -> Iterator[ServiceProcess]:
    """Yield ``service`` (a fixture's body), then stop it; if it had exited on its own meanwhile, print its log's
    tail, so a crash shows in the report of the tests that failed for it."""
    try:
        yield service
    finally:
        crashed = service.proc.poll() is not None
        service.stop()
        if crashed:
            print(f"{name} exited during the tests; its log ({service.log}):\n{service.log_tail()}")
