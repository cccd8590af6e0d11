"""The drills' processes (``bench/drills.py``, ``bench/replica_drill.py``): moto's S3 server (or a given endpoint), a
fresh bucket holding each example user's adapter as the compressor publishes it and a user key, engines on the
tiny example model and a gateway, each a real process writing its log under ``workdir/logs``; and the helpers
that kill them (SIGKILL), find their URLs and read their memory.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from soppu.adapter import CONFIG_NAME, WEIGHTS_NAME
from soppu.auth import KeyRing, Role
from soppu.cli.stack import Service, free_port
from soppu.registry import Manifest, Pointer, ServedFrom
from soppu.store import S3Store
from soppu.store.layout import AdapterVersion

__all__ = [
    "ENGINE_START_S",
    "DrillError",
    "DrillUser",
    "Topology",
    "base_url",
    "build_drill_examples",
    "kill",
    "rss_mib",
]

_ROOT = Path(__file__).resolve().parents[1]
_S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
ENGINE_START_S = 180.0  # torch and a model loaded on two busy cores


class DrillError(RuntimeError):
    """The drill could not be set up or run (not a finding about the services)."""


@dataclass
class DrillUser:
    user_id: str
    key: str
    prompts: list[str]
    reference: dict[str, str] = field(default_factory=dict)  # prompt -> the answer served before any fault


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def base_url(service: Service) -> str:
    return service.health.rsplit("/", 1)[0]  # http://127.0.0.1:PORT, from its health URL


def kill(service: Service) -> None:
    """SIGKILL: a crash, nothing flushed or closed."""
    if service.proc is not None and service.proc.poll() is None:
        service.proc.kill()
        service.proc.wait()


def _publish(store: S3Store, user_id: str, adapter_dir: Path) -> None:
    """Version 1 of ``user_id``'s default adapter, served from the original, as the compressor leaves it."""
    ref = AdapterVersion(user_id, "default", 1)
    for key, name in zip(ref.export_keys(), (CONFIG_NAME, WEIGHTS_NAME), strict=True):
        store.put(key, adapter_dir / name)
    manifest = Manifest(
        user_id=user_id, adapter="default", version=1, served_from=ServedFrom.ORIGINAL.value,
        export_prefix=ref.export_prefix, core_prefix=None, cohort=None, basis_key=None, base_model=None, report={},
    )  # fmt: skip
    store.put(ref.manifest_key, manifest.to_json())
    store.put(ref.pointer_key, Pointer(version=1, manifest_key=ref.manifest_key).to_json())  # last: it publishes


class Topology:
    """moto (unless an endpoint is given), two engines and a gateway over a fresh bucket of the example users.
    A context manager; every process writes its log under ``workdir/logs``."""

    def __init__(self, examples: Path, workdir: Path, s3_endpoint: str | None = None, engines: int = 2) -> None:
        self.examples, self.logs = examples, workdir / "logs"
        self.s3_endpoint, self.engine_count = s3_endpoint, engines
        self.services: list[Service] = []
        self.engines: list[Service] = []
        self.users: list[DrillUser] = []
        self.gateway_port = free_port()
        self.gateway: Service | None = None

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def _service(self, name: str, command: list[str], health: str, env: dict[str, str]) -> Service:
        # One OpenMP thread: tiny matrices, and four processes share two cores.
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **env}
        service = Service(name, command, full_env, health, cwd=_ROOT)
        self.services.append(service)
        service.start(self.logs)
        return service

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        store = self.start_store()
        ring = KeyRing(store)
        for user in json.loads((self.examples / "users.json").read_text())["users"]:
            _publish(store, user["user_id"], self.examples / user["adapter"])
            key = ring.issue(Role.USER, user["user_id"])[0]
            self.users.append(DrillUser(user["user_id"], key, [p["prompt"] for p in user["prompts"]]))
        shared = self.store_env(store)
        self.start_engines(shared)
        for engine in self.engines:  # started together: their model loads overlap
            engine.wait_healthy(ENGINE_START_S)
        gateway_env = {
            **shared,
            "SOPPU_GATEWAY_BACKENDS": json.dumps(self.backends()),
            "SOPPU_GATEWAY_HEALTH_INTERVAL_S": "0.5",  # a restarted engine is back within half a second
            # A few users carry all the load: the per-user limits would refuse it, and they are not drilled here.
            "SOPPU_GATEWAY_USER_REQUESTS_PER_S": "0",
            "SOPPU_GATEWAY_USER_TOKENS_PER_S": "0",
            "SOPPU_GATEWAY_USER_MAX_IN_FLIGHT": "0",
        }
        self.gateway = self.start_gateway("gateway", self.gateway_port, gateway_env)
        self.gateway.wait_healthy(60)

    def start_store(self) -> S3Store:
        """moto's server, unless an endpoint was given, and a fresh bucket on it."""
        if self.s3_endpoint is None:
            port = free_port()
            command = [sys.executable, "-m", "soppu_web.s3_server", "-H", "127.0.0.1", "-p", str(port)]
            moto = self._service("s3", command, f"http://127.0.0.1:{port}/moto-api/", {})
            moto.wait_healthy(60)
            self.s3_endpoint = f"http://127.0.0.1:{port}"
        store = S3Store(f"drill-{uuid.uuid4().hex[:12]}", endpoint_url=self.s3_endpoint, access_key="testing",
                        secret_key="testing", region="us-east-1")  # fmt: skip
        store.ensure_bucket()
        return store

    def store_env(self, store: S3Store) -> dict[str, str]:
        """What every service needs to reach ``store``'s bucket."""
        return {**_S3_ENV, "S3_ENDPOINT_URL": str(self.s3_endpoint), "SOPPU_STORE_URL": store.url}

    def start_engines(self, env: dict[str, str]) -> None:
        """Start the engines on the example model; not waited for (see ``wait_healthy``)."""
        for n in range(self.engine_count):
            port = free_port()
            command = [sys.executable, "-m", "inference_service", "--host", "127.0.0.1", "--port", str(port)]
            command += ["--model", str(self.examples / "base"), "--device", "cpu"]
            self.engines.append(self._service(f"engine-{n}", command, f"http://127.0.0.1:{port}/health", env))

    def backends(self) -> list[dict[str, str]]:
        """The engines, as the gateway's ``SOPPU_GATEWAY_BACKENDS`` lists them."""
        return [{"url": base_url(e), "kind": "engine"} for e in self.engines]

    def start_gateway(self, name: str, port: int, env: dict[str, str]) -> Service:
        """Start a gateway on ``port``; not waited for."""
        command = [sys.executable, "-m", "gateway_service", "--port", str(port), "--log-level", "warning"]
        return self._service(name, command, f"http://127.0.0.1:{port}/readyz", env)

    def live_gateway(self) -> Service:
        assert self.gateway is not None, "the topology is not started"
        return self.gateway

    def restart(self, service: Service, timeout_s: float = ENGINE_START_S) -> None:
        """Start a killed service again, same command and port, and wait until it answers its health check."""
        service.start(self.logs)
        service.wait_healthy(timeout_s)

    def log_tails(self) -> str:
        return "\n".join(f"--- {s.name} ---\n{s.tail(20)}" for s in self.services)

    def stop(self) -> None:
        for service in reversed(self.services):  # the gateway first, the store last
            service.stop()

    def __enter__(self) -> Topology:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def build_drill_examples(users: int, out: Path) -> Path:
    from soppu.examples import ExamplesSpec, build_examples

    # The cache `make test` and `make demo` share, so the tiny base model is trained once.
    cache = Path(os.environ.get("SOPPU_CACHE_DIR", _ROOT / ".cache" / "soppu"))
    return build_examples(ExamplesSpec(users=users), out, cache_dir=cache)
