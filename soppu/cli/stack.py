"""The local stack without docker: an S3 server (moto's standalone server) or a local-directory store, our engine,
the compressor and the gateway, as local processes under one supervisor. ``soppu dev`` runs it until Ctrl-C;
``soppu demo`` and the end-to-end tests start it, use it and stop it.

Processes are started with this interpreter (``python -m <service>``), each with its own log file; the stack
waits until every one answers its health route, and stopping it terminates them all (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = ["Service", "Stack", "StackConfig", "free_port", "free_ports_config", "stop_process"]

_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "soppu-dev",
    "AWS_SECRET_ACCESS_KEY": "soppu-dev",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port free on the loopback interface right now (free only until someone takes it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class StackConfig:
    model: Path
    workdir: Path
    host: str = "127.0.0.1"
    gateway_port: int = 8080
    compressor_port: int = 8081
    engine_port: int = 8082
    s3_port: int = 9000
    store: str = "s3"  # "s3" (moto's server) or "local" (a directory under workdir)
    bucket: str = "soppu"
    device: str = "auto"
    admin_key: str = field(default_factory=lambda: os.environ.get("SOPPU_ADMIN_KEY") or secrets.token_urlsafe(24))
    compressor_env: dict[str, str] = field(default_factory=dict)  # extra SOPPU_COMPRESSOR_* settings

    def url(self, port: int) -> str:
        return f"http://{self.host}:{port}"


@dataclass
class Service:
    name: str
    command: list[str]
    env: dict[str, str]
    health: str  # URL that answers 200 once the service is up
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self, logs: Path) -> None:
        self.log = logs / f"{self.name}.log"
        out: IO[bytes] = self.log.open("ab")
        self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd)
        out.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.health, timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, timeout_s: float) -> None:
        """Return once the health URL answers 200; raise with the log's tail if the process dies or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited while starting; its log:\n{self.tail()}")
            if self.healthy():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become healthy in {timeout_s:.0f} s; its log:\n{self.tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout)

    def tail(self, lines: int = 30) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class Stack:
    """The topology of ``docker-compose.yml``'s cpu profile, as local processes. A context manager."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.services = self._services()

    @property
    def gateway(self) -> str:
        return self.config.url(self.config.gateway_port)

    @property
    def compressor(self) -> str:
        return self.config.url(self.config.compressor_port)

    @property
    def engine(self) -> str:
        return self.config.url(self.config.engine_port)

    def store_url(self) -> str:
        c = self.config
        return f"s3://{c.bucket}" if c.store == "s3" else str((c.workdir / "store").resolve())

    def _services(self) -> dict[str, Service]:
        c, py = self.config, sys.executable
        base = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"}
        s3 = {**_CREDENTIALS, "S3_ENDPOINT_URL": c.url(c.s3_port)} if c.store == "s3" else {}
        shared = {**base, **s3, "SOPPU_STORE_URL": self.store_url(), "SOPPU_ADMIN_KEY": c.admin_key}
        services = {}
        if c.store == "s3":
            moto = [py, "-m", "soppu_web.s3_server", "-H", c.host, "-p", str(c.s3_port)]
            services["s3"] = Service("s3", moto, base, c.url(c.s3_port) + "/moto-api/")
        engine = [py, "-m", "inference_service", "--host", c.host, "--port", str(c.engine_port)]
        engine += ["--model", str(c.model), "--device", c.device]
        # The engine reads adapters only where it is told to: the store's bucket, or the store's directory.
        engine_env = {**base, **s3, "SOPPU_STORE_URL": self.store_url()}
        if c.store != "s3":
            engine_env["SOPPU_ENGINE_LOCAL_ADAPTER_ROOTS"] = json.dumps([self.store_url()])
        services["engine"] = Service("engine", engine, engine_env, self.engine + "/health")
        compressor_env = {
            **shared,
            "SOPPU_COMPRESSOR_BASE_MODEL": str(c.model),
            "SOPPU_COMPRESSOR_DEVICE": c.device,
            "SOPPU_COMPRESSOR_GATEWAY_URLS": json.dumps([self.gateway]),
            **c.compressor_env,
        }
        compressor = [py, "-m", "compressor_service", "--host", c.host, "--port", str(c.compressor_port)]
        services["compressor"] = Service("compressor", compressor, compressor_env, self.compressor + "/healthz")
        gateway_env = {**shared, "SOPPU_GATEWAY_BACKENDS": json.dumps([{"url": self.engine, "kind": "engine"}])}
        gateway = [py, "-m", "gateway_service", "--host", c.host, "--port", str(c.gateway_port)]
        services["gateway"] = Service("gateway", gateway, gateway_env, self.gateway + "/healthz")
        return services

    def start(self, timeout_s: float = 180.0) -> None:
        logs = self.config.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if "s3" in self.services:  # the bucket must exist before the services look at it
            self._start(self.services["s3"], logs, timeout_s)
            self._make_bucket()
        for name in ("engine", "compressor", "gateway"):
            self.services[name].start(logs)
        for name in ("engine", "compressor", "gateway"):
            self.services[name].wait_healthy(timeout_s)

    def restart(self, name: str, timeout_s: float = 180.0) -> None:
        service = self.services[name]
        service.stop()
        self._start(service, self.config.workdir / "logs", timeout_s)

    def kill(self, name: str) -> None:
        """Kill a service outright (SIGKILL): a crash, for the tests that prove nothing is lost."""
        proc = self.services[name].proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def _start(self, service: Service, logs: Path, timeout_s: float) -> None:
        service.start(logs)
        service.wait_healthy(timeout_s)

    def _make_bucket(self) -> None:
        from soppu.store import S3Store

        c = self.config
        S3Store(
            c.bucket,
            endpoint_url=c.url(c.s3_port),
            access_key=_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret_key=_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        ).ensure_bucket()

    def stop(self) -> None:
        # The front first, the store last, so no service sees its dependency vanish mid-request.
        for name in ("gateway", "compressor", "engine", "s3"):
            if name in self.services:
                self.services[name].stop()

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_ports_config(model: Path, workdir: Path, **extra: Any) -> StackConfig:
    """A stack config on free ports, so a demo or a test never collides with a running `make dev`."""
    return StackConfig(
        model=model.resolve(),
        workdir=workdir,
        gateway_port=free_port(),
        compressor_port=free_port(),
        engine_port=free_port(),
        s3_port=free_port(),
        **extra,
    )
