"""The gateway's Prometheus metrics, in a registry per app (tests build several apps in one process).

No metric carries a user id (or any other unbounded label): routes are a fixed set, backends come from the
configuration. Backend health, in-flight counts and the resolution cache's hit ratio are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from soppu_web.metrics import service_registry

from .routing import Backend

__all__ = ["CONTENT_TYPE", "GatewayMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The gateway's own overhead is sub-millisecond; generations take seconds: buckets span both.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _StateCollector(Collector):
    def __init__(self, backends: list[Backend], lookups: Counter, in_flight: Callable[[], int]) -> None:
        self._backends = backends
        self._lookups = lookups
        self._in_flight = in_flight

    def collect(self) -> Iterator[Metric]:
        healthy = GaugeMetricFamily("soppu_gateway_backend_healthy", "1 if it passes checks", labels=["backend"])
        busy = GaugeMetricFamily("soppu_gateway_backend_in_flight", "requests open on it", labels=["backend"])
        for b in self._backends:
            healthy.add_metric([b.url], float(b.healthy))
            busy.add_metric([b.url], b.in_flight)
        yield healthy
        yield busy
        yield GaugeMetricFamily("soppu_gateway_in_flight", "requests inside the gateway", value=self._in_flight())
        counts = {s.labels["result"]: s.value for m in self._lookups.collect() for s in m.samples}
        total = sum(counts.values())
        ratio = counts.get("hit", 0.0) / total if total else 0.0
        yield GaugeMetricFamily(
            "soppu_gateway_resolution_cache_hit_ratio", "resolutions answered from the cache / all", value=ratio
        )


class GatewayMetrics:
    def __init__(self) -> None:
        self._state: _StateCollector | None = None
        self.registry = r = service_registry()
        self.requests = Counter(
            "soppu_gateway_requests", "requests answered", ["route", "status", "backend"], registry=r
        )
        self.latency = Histogram(
            "soppu_gateway_request_duration_seconds",
            "seconds from request to the end of the response (streams: the last event)",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token = Histogram(
            "soppu_gateway_time_to_first_token_seconds",
            "seconds from request to the first streamed token",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("soppu_gateway_generated_tokens", "tokens generated for clients", registry=r)
        self.lookups = Counter(
            "soppu_gateway_resolution_lookups",
            "adapter resolutions by outcome: hit (cache), revalidated (ETag unchanged), miss (read)",
            ["result"],
            registry=r,
        )
        self.retries = Counter(
            "soppu_gateway_upstream_retries", "upstream attempts after the first, by reason", ["reason"], registry=r
        )
        self.limited = Counter(
            "soppu_gateway_rate_limited", "requests refused by a per-user limit", ["limit"], registry=r
        )
        self.limits_shared = Gauge(
            "soppu_gateway_limits_shared", "1 while per-user limits are kept in Redis for every replica", registry=r
        )
        self.redis_errors = Counter(
            "soppu_gateway_redis_errors",
            "failed Redis calls by operation (admit, charge, ping, subscribe); each fell back or will retry",
            ["operation"],
            registry=r,
        )
        self.invalidations = Counter(
            "soppu_gateway_invalidations",
            "cache invalidations applied, by source: http (admin route), pubsub (a message), subscribed (drop all)",
            ["source"],
            registry=r,
        )
        self.stream_errors = Counter(
            "soppu_gateway_stream_errors",
            "error events in streams: a backend's (one opening a stream is answered as its status) and the gateway's",
            ["error_type"],
            registry=r,
        )

    def watch(self, backends: list[Backend], in_flight: Callable[[], int]) -> None:
        """Report these backends and this in-flight count at scrape time (replacing an earlier gateway's)."""
        if self._state is not None:
            self.registry.unregister(self._state)
        self._state = _StateCollector(backends, self.lookups, in_flight)
        self.registry.register(self._state)

    def render(self) -> bytes:
        return generate_latest(self.registry)
