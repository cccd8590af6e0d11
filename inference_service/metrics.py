"""Prometheus metrics under LoRAX's names, in a registry per app (tests build several apps in one process).

prometheus_client appends ``_total`` to counters, so LoRAX's ``lorax_request_count`` is exposed as
``lorax_request_count_total`` (likewise ``_success`` and ``_failure``); histograms and gauges keep LoRAX's names.
Queue, batch and adapter-cache figures are read from ``engine.stats`` when scraped, never cached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from soppu_web.metrics import service_registry

from .engine import EngineStats, GenerationResult

__all__ = ["CONTENT_TYPE", "ServiceMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TOKEN_BUCKETS = tuple(float(2**i) for i in range(12))  # 1 .. 2048 tokens
_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _EngineStatsCollector(Collector):
    """Gauges read from the engine at scrape time; nothing while no engine is running."""

    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats is None:
            return
        gauges = {
            "lorax_queue_length": ("requests waiting for a batch slot", stats.queue_length),
            "lorax_batch_current_size": ("requests in the running batch", stats.batch_size),
            "soppu_adapter_cache_entries": ("adapters held in the engine's cache", stats.cached_adapters),
            "soppu_adapter_cache_bytes": ("bytes of adapter weights in the cache", stats.cache_bytes),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=value)
        yield CounterMetricFamily(
            "soppu_adapter_downloads", "adapters fetched from their source", stats.adapter_downloads
        )


class ServiceMetrics:
    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self.registry = service_registry()
        r = self.registry
        self.request_count = Counter("lorax_request_count", "generation requests received", registry=r)
        self.request_success = Counter("lorax_request_success", "generation requests that finished", registry=r)
        self.request_failure = Counter("lorax_request_failure", "failed requests by error_type", ["err"], registry=r)
        self.request_duration = Histogram(
            "lorax_request_duration", "seconds from request to last token", buckets=_DURATION_BUCKETS, registry=r
        )
        self.generated_tokens = Histogram(
            "lorax_request_generated_tokens", "tokens generated per request", buckets=_TOKEN_BUCKETS, registry=r
        )
        self.queue_duration = Histogram(
            "lorax_request_queue_duration", "seconds waiting for a batch slot", buckets=_DURATION_BUCKETS, registry=r
        )
        self.inference_duration = Histogram(
            "lorax_request_inference_duration",
            "seconds from prefill to last token",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.input_length = Histogram(
            "lorax_request_input_length", "prompt tokens per request", buckets=_TOKEN_BUCKETS, registry=r
        )
        r.register(_EngineStatsCollector(stats))

    def succeeded(self, result: GenerationResult, seconds: float) -> None:
        self.request_success.inc()
        self.request_duration.observe(seconds)
        self.generated_tokens.observe(result.generated_tokens)
        self.input_length.observe(result.prompt_tokens)
        self.queue_duration.observe(result.queue_s)
        self.inference_duration.observe(result.inference_s)

    def failed(self, error_type: str) -> None:
        self.request_failure.labels(err=error_type).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
