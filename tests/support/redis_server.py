"""A real ``redis-server`` for the tests, on a free loopback port, with nothing persisted; it can be killed
(``kill -9``) and started again on the same port, as an outage and its end.

Without ``redis-server`` on the PATH the tests that need it fail (never skip), saying how to install it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from tests.support.processes import free_port, stop_process

__all__ = ["MISSING", "RedisServer"]

MISSING = "redis-server is not installed: `make system-deps` installs it (from the OS packages)"


class RedisServer:
    """``start()`` it; ``url`` names it (with the password, if any); ``kill()`` is a crash, ``start()`` again
    brings it back on the same port, empty."""

    def __init__(self, log: Path, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(MISSING)
        self._binary = binary
        self.log = log
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)

    def start(self, timeout_s: float = 30.0) -> RedisServer:
        command = [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        with self.client() as probe:
            while True:
                try:
                    probe.ping()
                    return self
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        tail = self.log.read_text(errors="replace")[-2000:]
                        self.stop()
                        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{tail}") from None
                    time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no goodbye to its clients."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
