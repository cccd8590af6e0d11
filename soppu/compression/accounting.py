"""Parameter and byte accounting: what the original adapters cost against what their compressed form costs.

An original LoRA module costs ``r (d_out + d_in)`` parameters. The compressed form costs, per cluster, its shared
bases ``R (d_out + d_in)`` per module, counted ONCE however many adapters share them, plus every adapter's core:
``R^2`` (full) or ``R`` (diag) per module. Per adapter, the amortised cost is its share of the bases
(bases / adapters in its cluster) plus its own core. Bytes are parameters times the element size: the originals'
own dtypes, and the storage dtype of the compressed form; when the callers know real file sizes (safetensors
headers and all), they pass them and get those totals and ratios too. Pure arithmetic: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from soppu.adapter import LoraAdapter
from soppu.compression.model import Cluster, CompressedAdapter, Compression, Mode

__all__ = ["account", "bases_parameters", "core_parameters"]


def bases_parameters(cluster: Cluster) -> int:
    """Parameters of a cluster's shared bases: ``R (d_out + d_in)`` summed over modules."""
    return sum(b.u.numel() + b.v.numel() for b in cluster.bases.values())


def core_parameters(adapter: CompressedAdapter) -> int:
    """Parameters of an adapter's cores (R x R or R per module, as held)."""
    return sum(core.numel() for core in adapter.cores.values())


def _adapter_bytes(adapter: LoraAdapter) -> int:
    return sum(t.numel() * t.element_size() for m in adapter.modules.values() for t in (m.a, m.b))


def _ratio(original: float, compressed: float) -> float | None:
    return original / compressed if compressed else None


def _check_sizes(sizes: Sequence[int] | None, expected: int, what: str) -> None:
    if sizes is not None and len(sizes) != expected:
        raise ValueError(f"{what} needs {expected} sizes, got {len(sizes)}")


def account(
    compression: Compression,
    originals: Sequence[LoraAdapter],
    *,
    dtype: torch.dtype = torch.float32,
    original_file_bytes: Sequence[int] | None = None,
    bases_file_bytes: Sequence[int] | None = None,
    core_file_bytes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The accounting of ``compression`` against ``originals`` (the same adapters, in ``compression.adapters``
    order), JSON-ready.

    ``dtype`` is the storage dtype of the compressed tensors. The optional file sizes are per original adapter,
    per cluster (bases files) and per compressed adapter (core files), in the same orders.
    """
    n = len(compression.adapters)
    if len(originals) != n:
        raise ValueError(f"{n} compressed adapters but {len(originals)} originals")
    _check_sizes(original_file_bytes, n, "original_file_bytes")
    _check_sizes(bases_file_bytes, len(compression.clusters), "bases_file_bytes")
    _check_sizes(core_file_bytes, n, "core_file_bytes")
    itemsize = torch.empty((), dtype=dtype).element_size()
    members = [sum(1 for a in compression.adapters if a.cluster == k) for k in range(len(compression.clusters))]
    bases = [bases_parameters(cluster) for cluster in compression.clusters]

    per_adapter = []
    for index, (adapter, original) in enumerate(zip(compression.adapters, originals, strict=True)):
        core = core_parameters(adapter)
        amortised = bases[adapter.cluster] / members[adapter.cluster] + core
        row: dict[str, Any] = {
            "name": adapter.name,
            "cluster": adapter.cluster,
            "original_parameters": original.num_parameters(),
            "original_bytes": _adapter_bytes(original),
            "core_parameters": core,
            "core_bytes": core * itemsize,
            "amortised_parameters": amortised,
            "amortised_bytes": amortised * itemsize,
            "ratio_parameters": _ratio(original.num_parameters(), amortised),
            "ratio_bytes": _ratio(_adapter_bytes(original), amortised * itemsize),
        }
        if original_file_bytes is not None:
            row["original_file_bytes"] = original_file_bytes[index]
        if core_file_bytes is not None and bases_file_bytes is not None:
            k = adapter.cluster
            row["core_file_bytes"] = core_file_bytes[index]
            row["amortised_file_bytes"] = bases_file_bytes[k] / members[k] + core_file_bytes[index]
        per_adapter.append(row)

    original_parameters = sum(row["original_parameters"] for row in per_adapter)
    original_bytes = sum(row["original_bytes"] for row in per_adapter)
    cores = sum(row["core_parameters"] for row in per_adapter)
    compressed_parameters = sum(bases) + cores
    report: dict[str, Any] = {
        "mode": Mode(compression.mode).value,
        "dtype": str(dtype).removeprefix("torch."),
        "adapters": n,
        "original": {"parameters": original_parameters, "bytes": original_bytes},
        "compressed": {
            "parameters": compressed_parameters,
            "bases_parameters": sum(bases),
            "cores_parameters": cores,
            "bytes": compressed_parameters * itemsize,
        },
        "ratio": {
            "parameters": _ratio(original_parameters, compressed_parameters),
            "bytes": _ratio(original_bytes, compressed_parameters * itemsize),
        },
        "clusters": [
            {"index": k, "adapters": members[k], "bases_parameters": bases[k], "bases_bytes": bases[k] * itemsize}
            for k in range(len(compression.clusters))
        ],
        "per_adapter": per_adapter,
    }
    if original_file_bytes is not None:
        report["original"]["file_bytes"] = sum(original_file_bytes)
    if bases_file_bytes is not None and core_file_bytes is not None:
        compressed_files = sum(bases_file_bytes) + sum(core_file_bytes)
        report["compressed"]["file_bytes"] = compressed_files
        for k, size in enumerate(bases_file_bytes):
            report["clusters"][k]["bases_file_bytes"] = size
        if original_file_bytes is not None:
            report["ratio"]["file_bytes"] = _ratio(sum(original_file_bytes), compressed_files)
    return report
