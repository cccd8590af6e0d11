"""Writing the compressed format (described in :mod:`soppu.compression.format`): the bases file of a cluster, the
core file of an adapter, and a whole compression directory with its manifest. Deterministic: identical input
gives byte-identical files (sorted JSON keys, tensors in name order, no timestamps).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from soppu.compression.artifacts import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    STORAGE_DTYPES,
    ArtifactMeta,
    bad_format,
    bases_file_name,
    canonical_json,
    check_core_fits,
    core_file_name,
    hash_tensors,
)
from soppu.compression.model import Cluster, CompressedAdapter, Compression, Mode, ModuleBasis

__all__ = ["bases_bytes", "compute_basis_id", "core_bytes", "write_compression"]

_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
_JSON_FIELDS = frozenset({"target_modules", "modules"})  # metadata values stored as JSON text


def _stored(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype must be one of {STORAGE_DTYPES}, got {dtype}")
    return tensor.detach().to(device="cpu", dtype=dtype).contiguous()


def _header(compression: Compression | ArtifactMeta, kind: str) -> dict[str, Any]:
    """The fields every artifact (and the manifest) opens with, as plain JSON values."""
    targets = compression.target_modules
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "mode": Mode(compression.mode).value,
        "base_model": compression.base_model or "",
        "target_modules": targets if isinstance(targets, str) else list(targets),
    }


def _metadata(fields: dict[str, Any]) -> dict[str, str]:
    # safetensors metadata holds strings only: structured values are stored as JSON text.
    return {key: canonical_json(value) if key in _JSON_FIELDS else str(value) for key, value in fields.items()}


def _serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file with a key-sorted header and tensors laid out in name order.

    Written by hand because ``safetensors.torch.save`` emits the metadata in hash-map order, which differs
    between calls, and our files must be byte-identical for identical input.
    """
    header: dict[str, Any] = {"__metadata__": metadata}
    chunks, offset = [], 0
    for name, tensor in sorted(tensors.items()):
        raw = tensor.view(torch.uint8).numpy().tobytes()  # little-endian, as safetensors requires
        span = [offset, offset + len(raw)]
        header[name] = {"dtype": _ST_DTYPES[tensor.dtype], "shape": list(tensor.shape), "data_offsets": span}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data buffer starts 8-byte aligned, as the library writes it
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def _bases_tensors(bases: dict[str, ModuleBasis], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    tensors = {}
    for module, basis in sorted(bases.items()):
        tensors[f"{module}.U"] = _stored(basis.u, dtype)
        tensors[f"{module}.V"] = _stored(basis.v, dtype)
    return tensors


def compute_basis_id(cluster: Cluster, dtype: torch.dtype = torch.float32) -> str:
    """The content hash of ``cluster``'s bases as stored at ``dtype`` (the ``basis_id`` of its bases file)."""
    return hash_tensors(_bases_tensors(cluster.bases, dtype))


def _bases_file(cluster: Cluster, compression: Compression, dtype: torch.dtype) -> tuple[bytes, str]:
    if not cluster.bases:
        raise bad_format("a cluster without bases cannot be written")
    tensors = _bases_tensors(cluster.bases, dtype)
    basis_id = hash_tensors(tensors)
    modules = {m: {"rank": b.rank, "d_out": b.shape[0], "d_in": b.shape[1]} for m, b in cluster.bases.items()}
    fields = {**_header(compression, "bases"), "modules": modules, "basis_id": basis_id}
    return _serialize(tensors, _metadata(fields)), basis_id


def bases_bytes(cluster: Cluster, compression: Compression, *, dtype: torch.dtype = torch.float32) -> bytes:
    """The bases file of ``cluster`` (one of ``compression.clusters``)."""
    return _bases_file(cluster, compression, dtype)[0]


def _maybe(kind: type, value: Any) -> Any:
    # Solvers may hand over numpy or 0-d torch scalars; the metadata wants plain JSON numbers (or null).
    return None if value is None else kind(value)


def core_bytes(
    compression: Compression,
    adapter: CompressedAdapter,
    *,
    basis_id: str | None = None,
    bases_ref: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> bytes:
    """The core file of ``adapter``. ``basis_id`` is its cluster's (computed when not given; pass it when
    writing many cores of one cluster, since computing it hashes the whole bases). ``bases_ref`` is where its
    bases file lies relative to the core's folder (recorded as the ``bases`` metadata field)."""
    cluster = compression.clusters[adapter.cluster]
    check_core_fits(adapter, cluster.bases, Mode(compression.mode))
    if basis_id is None:
        basis_id = compute_basis_id(cluster, dtype)
    modules = {
        module: {
            "rank": cluster.bases[module].rank,
            "scaling": 1.0,
            "source_rank": _maybe(int, adapter.source_ranks.get(module)),
            "source_scaling": _maybe(float, adapter.source_scalings.get(module)),
            "error": _maybe(float, adapter.errors.get(module)),
        }
        for module in adapter.cores
    }
    fields = {**_header(compression, "core"), "modules": modules, "basis_id": basis_id, "name": adapter.name}
    if bases_ref is not None:
        fields["bases"] = bases_ref
    tensors = {f"{module}.S": _stored(core, dtype) for module, core in sorted(adapter.cores.items())}
    return _serialize(tensors, _metadata(fields))


def _write_atomic(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def write_compression(
    compression: Compression, directory: Path | str, *, dtype: torch.dtype = torch.float32
) -> list[Path]:
    """Write every bases file, every core and the manifest (last) under ``directory``; return the paths."""
    directory = Path(directory)
    names = [adapter.name for adapter in compression.adapters]
    if len(set(names)) != len(names):
        raise bad_format("adapter names in a compression must be unique")
    written, basis_ids, clusters = [], [], []
    for index, cluster in enumerate(compression.clusters):
        data, basis_id = _bases_file(cluster, compression, dtype)
        basis_ids.append(basis_id)
        written.append(_write_atomic(directory / bases_file_name(index), data))
        clusters.append({"index": index, "bases": bases_file_name(index), "basis_id": basis_ids[-1]})
    adapters = []
    for adapter in compression.adapters:
        bases_ref = f"../{bases_file_name(adapter.cluster)}"  # cores/<name> -> the directory's bases file
        data = core_bytes(compression, adapter, basis_id=basis_ids[adapter.cluster], bases_ref=bases_ref, dtype=dtype)
        written.append(_write_atomic(directory / core_file_name(adapter.name), data))
        adapters.append(
            {
                "name": adapter.name,
                "cluster": adapter.cluster,
                "bases": bases_file_name(adapter.cluster),
                "core": core_file_name(adapter.name),
                "basis_id": basis_ids[adapter.cluster],
            }
        )
    dtype_name = str(dtype).removeprefix("torch.")
    manifest = {**_header(compression, "manifest"), "dtype": dtype_name, "clusters": clusters, "adapters": adapters}
    text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
    written.append(_write_atomic(directory / MANIFEST_NAME, text.encode()))
    return written
