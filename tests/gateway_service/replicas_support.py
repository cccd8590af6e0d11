"""What the tests of gateway replicas share (a test file cannot import a conftest): the deployment of two gateway
processes on one Redis, and reading their /readyz and /metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from tests.gateway_service.gateway_support import Deployment
from tests.support.processes import ServiceProcess
from tests.support.redis_server import RedisServer

__all__ = ["Replicas", "metric", "readiness"]


@dataclass
class Replicas:
    """Two gateways (``gateways[0]``, ``gateways[1]``) on one store and one Redis (with a password)."""

    redis: RedisServer
    gateways: list[Deployment]
    backends: list[ServiceProcess] = field(default_factory=list)


def readiness(gateway: Deployment) -> tuple[int, dict[str, object]]:
    r = httpx.get(f"{gateway.url}/readyz", timeout=30)
    return r.status_code, r.json()


def metric(gateway: Deployment, name: str, labels: str = "") -> float:
    """The value of the sample ``name{labels}`` on /metrics (0 when absent), e.g. ``labels='source="pubsub"'``."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in httpx.get(f"{gateway.url}/metrics", timeout=30).text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == wanted:
            return float(value)
    return 0.0
