"""Timing helpers shared by the benchmark scripts: ours-vs-baseline comparisons and the machine record.

Ours and the baseline alternate within each iteration, so drift in the machine hits both equally; ratios are
ours / baseline of the medians.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["WARMUP", "compare", "emit_report", "machine", "percentile", "summary"]

WARMUP = 3


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    # Nearest-rank: a real sample, not an interpolation between two.
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summary(samples_s: list[float], size: int) -> dict[str, float]:
    median = percentile(samples_s, 0.5)
    return {
        "median_ms": round(median * 1e3, 3),
        "p90_ms": round(percentile(samples_s, 0.9) * 1e3, 3),
        "mib_per_s": round(size / (1024 * 1024) / median, 1) if median > 0 else float("inf"),
    }


def compare(
    name: str, ours: Callable[[int], object], baseline: Callable[[int], object], iterations: int, size: int
) -> dict[str, Any]:
    """Time ``ours(i)`` and ``baseline(i)`` alternately; return their summaries and the median ratio."""
    timings: dict[str, list[float]] = {"ours": [], "baseline": []}
    for i in range(WARMUP + iterations):
        for label, fn in (("ours", ours), ("baseline", baseline)):
            start = time.perf_counter()
            fn(i)
            elapsed = time.perf_counter() - start
            if i >= WARMUP:
                timings[label].append(elapsed)
    result: dict[str, Any] = {label: summary(samples, size) for label, samples in timings.items()}
    result["ratio_median"] = round(result["ours"]["median_ms"] / result["baseline"]["median_ms"], 3)
    print(f"{name}: {result}", file=sys.stderr)
    return result


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def emit_report(
    benchmark: str, config: dict[str, Any], notes: dict[str, str], body: dict[str, Any], started: float
) -> None:
    """Print the one JSON object a benchmark script reports, with the machine and the wall time."""
    report = {
        "benchmark": benchmark,
        "machine": machine(),
        "config": {**config, "warmup": WARMUP},
        "notes": {**notes, "ratio_median": "ours median / baseline median"},
        **body,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))
