"""The Prometheus registry each service's metrics live in."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from prometheus_client import CollectorRegistry, disable_created_metrics

__all__ = ["service_registry"]


def service_registry() -> CollectorRegistry:
    """A fresh registry, with prometheus_client's ``*_created`` series switched off: they double what a scrape
    carries, and LoRAX exposes none. The switch is process-wide, which is harmless: a service process holds only
    its own metrics."""
    # The cast: the function is unannotated in prometheus_client; it takes and returns nothing.
    cast("Callable[[], None]", disable_created_metrics)()
    return CollectorRegistry()
