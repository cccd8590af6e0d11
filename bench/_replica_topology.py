"""The replica drill's sizes and topology (``bench/replica_drill.py``): ``bench/drills.py``'s store and two
engines, plus one ``redis-server``, two compressors (short leases; the error gate alone, ``base_model=none``)
and two gateways sharing per-user limits and invalidations through the Redis.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from _drill_topology import DrillError, Topology

from soppu.cli.stack import Service, free_port
from soppu.store import S3Store

__all__ = ["FULL", "QUICK", "ReplicaTopology", "Sizes"]

_START_S = 180.0  # torch imported by four processes at once on two busy cores


@dataclass(frozen=True)
class Sizes:
    users: int = 10  # drill users (the limit's user is one more), each on one of the example adapters
    chaos_s: float = 30.0
    deletions: int = 3
    after_deletions_s: float = 2.0  # the load goes on at least this long after the last deletion's acknowledgement
    load_workers: int = 3
    load_pause_s: float = 0.1  # each load worker's pause between requests: a user's share stays under the limit
    upload_gap_s: float = 0.4  # the uploader's pause between uploads
    queued_at_kill: int = 4  # uploads sent to the doomed compressor just before the kill: its queue is not empty
    refit_every_s: float = 5.0
    kill_share: float = 1 / 3  # the kills land this far into the chaos phase
    deleted_share: float = 0.25  # of the load's requests, for a deleted user (once there is one)
    burst: int = 20  # SOPPU_GATEWAY_USER_REQUEST_BURST; the drill's normal traffic per user stays well under
    rate: float = 10.0  # SOPPU_GATEWAY_USER_REQUESTS_PER_S
    hang_s: float = 60.0  # the clients' read timeout
    settle_timeout_s: float = 600.0  # hang guard on settling
    seed: int = 0


FULL = Sizes()
QUICK = Sizes(users=4, chaos_s=10.0, deletions=1, load_workers=2, upload_gap_s=0.5, queued_at_kill=3,
              refit_every_s=4.0)  # fmt: skip


class ReplicaTopology(Topology):
    """``Topology``'s store and engines, plus a redis-server, two compressors and two gateways."""

    def __init__(self, examples: Path, workdir: Path, sizes: Sizes, s3_endpoint: str | None = None) -> None:
        super().__init__(examples, workdir, s3_endpoint, engines=2)
        self.sizes = sizes
        self.admin_key = secrets.token_urlsafe(24)
        self.compressors: list[Service] = []
        self.gateways: list[Service] = []
        self.store: S3Store | None = None
        self.redis_url = ""

    def _start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise DrillError("redis-server is not installed (`make system-deps`)")
        port = free_port()
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self._service("redis", command, self.redis_url, {})  # its health is a PING, below
        deadline = time.monotonic() + 30
        with redis.Redis.from_url(self.redis_url, socket_timeout=2) as probe:
            while True:
                try:
                    probe.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise DrillError("redis-server did not answer PING within 30 s") from None
                    time.sleep(0.05)

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.store = store = self.start_store()
        self._start_redis()
        shared = {**self.store_env(store), "SOPPU_ADMIN_KEY": self.admin_key}
        self.start_engines(self.store_env(store))
        gateway_ports = [free_port() for _ in range(2)]
        compressor_env = {
            **shared,
            "SOPPU_COMPRESSOR_DEVICE": "cpu",
            "SOPPU_COMPRESSOR_TORCH_THREADS": "1",
            "SOPPU_COMPRESSOR_BASE_MODEL": "none",
            "SOPPU_COMPRESSOR_LEASE_TTL_S": "2",  # a dead replica's claims expire in 2 s
            "SOPPU_COMPRESSOR_REDIS_URL": self.redis_url,
            "SOPPU_COMPRESSOR_GATEWAY_URLS": json.dumps([f"http://127.0.0.1:{p}" for p in gateway_ports]),
        }
        for n in range(2):
            port = free_port()
            command = [sys.executable, "-m", "compressor_service", "--port", str(port), "--log-level", "warning"]
            self.compressors.append(
                self._service(f"compressor-{n}", command, f"http://127.0.0.1:{port}/readyz", compressor_env)
            )
        for service in self.engines + self.compressors:
            service.wait_healthy(_START_S)
        gateway_env = {
            **shared,
            "SOPPU_GATEWAY_BACKENDS": json.dumps(self.backends()),
            "SOPPU_GATEWAY_HEALTH_INTERVAL_S": "0.5",
            "SOPPU_GATEWAY_REDIS_URL": self.redis_url,
            # 0.1 s by default: on two busy cores a slow answer would count as an outage, and limits turn local.
            "SOPPU_GATEWAY_REDIS_TIMEOUT_S": "0.5",
            "SOPPU_GATEWAY_USER_REQUESTS_PER_S": str(self.sizes.rate),
            "SOPPU_GATEWAY_USER_REQUEST_BURST": str(self.sizes.burst),
        }
        for n, port in enumerate(gateway_ports):
            self.gateways.append(self.start_gateway(f"gateway-{n}", port, gateway_env))
        for gateway in self.gateways:
            gateway.wait_healthy(_START_S)
