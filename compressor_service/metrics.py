"""Prometheus metrics of the compressor, in a registry per app (tests build several apps in one process).

Uploads (by outcome), upload bytes, rejections (by code), job durations and outcomes, the queue depth and
the jobs running (read at scrape time), and histograms of the compression ratio and the worst module error
of finished jobs.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram, generate_latest

from soppu.registry import JobRecord
from soppu_web.metrics import service_registry

__all__ = ["CONTENT_TYPE", "CompressorMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_RATIO_BUCKETS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
_ERROR_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


class CompressorMetrics:
    def __init__(self, queue_depth: Callable[[], int], running: Callable[[], int]) -> None:
        self.registry = r = service_registry()
        self.uploads = Counter(
            "soppu_compressor_uploads", "uploads answered, by outcome (accepted, duplicate)", ["outcome"], registry=r
        )
        self.upload_bytes = Counter("soppu_compressor_upload_bytes", "request bytes of accepted uploads", registry=r)
        self.rejections = Counter(
            "soppu_compressor_upload_rejections", "uploads refused, by error code", ["code"], registry=r
        )
        self.job_duration = Histogram(
            "soppu_compressor_job_duration_seconds",
            "seconds a job ran, by final state",
            ["state"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.ratio = Histogram(
            "soppu_compressor_compression_ratio", "original / stored parameters", buckets=_RATIO_BUCKETS, registry=r
        )
        self.max_error = Histogram(
            "soppu_compressor_max_error", "worst module's relative error", buckets=_ERROR_BUCKETS, registry=r
        )
        Gauge("soppu_compressor_queue_depth", "jobs waiting for a worker", registry=r).set_function(queue_depth)
        Gauge("soppu_compressor_jobs_running", "jobs a worker is running", registry=r).set_function(running)

    def job_finished(self, job: JobRecord, seconds: float) -> None:
        self.job_duration.labels(state=job.state).observe(seconds)
        report = job.report
        if report is None:
            return
        self.ratio.observe(report.ratio)
        if report.gate.max_error is not None:  # None: the last step was a fit that diverged
            self.max_error.observe(report.gate.max_error)

    def render(self) -> bytes:
        return generate_latest(self.registry)
