"""The reconstruction-error report of a compression: per adapter, per module, and summaries, JSON-ready.

The errors are the relative Frobenius errors ``||W - U S V^T||_F / ||W||_F`` the solver recorded in each
:class:`~soppu.compression.model.CompressedAdapter` (this module never recomputes them; the solver owns that
formula). A module without a recorded error is left out of every statistic and listed under ``missing``.
Relative error overstates behavioural damage (see :mod:`soppu.verify.behaviour`), so this is one half of
verification, not all of it.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from soppu.compression.model import Compression, Mode

__all__ = ["error_report", "write_report"]


def _stats(values: Iterable[float]) -> dict[str, float] | None:
    data = sorted(values)
    if not data:
        return None
    return {
        "mean": statistics.fmean(data),
        "median": statistics.median(data),
        "max": data[-1],
        "min": data[0],
        "count": len(data),
    }


def error_report(compression: Compression) -> dict[str, Any]:
    """Per adapter per module relative error, per-module and overall statistics, the worst adapter (by its mean
    error over modules), the mode and the ranks of every cluster."""
    adapters: dict[str, Any] = {}
    by_module: dict[str, dict[str, float]] = {}
    missing: list[dict[str, str]] = []
    for adapter in compression.adapters:
        errors = {module: float(adapter.errors[module]) for module in sorted(adapter.cores) if module in adapter.errors}
        missing += [{"adapter": adapter.name, "module": m} for m in sorted(adapter.cores) if m not in errors]
        summary = _stats(errors.values())
        adapters[adapter.name] = {
            "cluster": adapter.cluster,
            "errors": errors,
            "mean": summary["mean"] if summary else None,
            "max": summary["max"] if summary else None,
        }
        for module, error in errors.items():
            by_module.setdefault(module, {})[adapter.name] = error

    modules = {}
    for module, per_adapter in sorted(by_module.items()):
        worst = max(per_adapter, key=lambda name: per_adapter[name])
        modules[module] = {**(_stats(per_adapter.values()) or {}), "worst_adapter": worst}
    scored = {name: row["mean"] for name, row in adapters.items() if row["mean"] is not None}
    worst_name = max(scored, key=lambda name: scored[name]) if scored else None
    ranks = [{module: basis.rank for module, basis in sorted(c.bases.items())} for c in compression.clusters]
    return {
        "mode": Mode(compression.mode).value,
        "base_model": compression.base_model,
        "adapters_count": len(compression.adapters),
        "clusters": len(compression.clusters),
        "ranks": ranks,
        "max_rank": max((r for cluster in ranks for r in cluster.values()), default=0),
        "overall": _stats(e for row in adapters.values() for e in row["errors"].values()),
        "worst_adapter": (
            {"name": worst_name, "mean": adapters[worst_name]["mean"], "max": adapters[worst_name]["max"]}
            if worst_name is not None
            else None
        ),
        "modules": modules,
        "adapters": adapters,
        "missing": missing,
    }


def write_report(report: dict[str, Any], path: Path | str) -> Path:
    """Write ``report`` as indented, key-sorted JSON (strict: NaN or Inf is an error), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n")
    tmp.replace(path)
    return path
