"""What a compressed artifact is, shared by the writer and the reader: the format's names and version, the file
names in a compression directory, the tuples a reader returns, the canonical tensor hash behind a ``basis_id``,
and the check that a core fits its bases. The format itself is described in :mod:`soppu.compression.format`,
which re-exports the public names; ``bad_format``, ``canonical_json``, ``hash_tensors`` and ``check_core_fits``
are for ``soppu.compression.writer`` and ``soppu.compression.reader`` only.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, NamedTuple

import torch

from soppu.compression.model import CompressedAdapter, Mode, ModuleBasis
from soppu.errors import CompressionError
from soppu.store.layout import check_name

__all__ = [
    "BAD_FORMAT",
    "BASIS_MISMATCH",
    "CORES_DIR",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "STORAGE_DTYPES",
    "ArtifactMeta",
    "BasesFile",
    "CoreFile",
    "bad_format",
    "bases_file_name",
    "canonical_json",
    "check_core_fits",
    "core_file_name",
    "hash_tensors",
]

FORMAT = "soppu-jd"
FORMAT_VERSION = "1"
MANIFEST_NAME = "compression.json"
CORES_DIR = "cores"
STORAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BAD_FORMAT = "bad_compressed_format"
BASIS_MISMATCH = "basis_mismatch"


class ArtifactMeta(NamedTuple):
    """What every compressed artifact says about the compression it belongs to."""

    mode: Mode
    base_model: str | None
    target_modules: tuple[str, ...] | str


class BasesFile(NamedTuple):
    basis_id: str
    meta: ArtifactMeta
    bases: dict[str, ModuleBasis]


class CoreFile(NamedTuple):
    basis_id: str
    meta: ArtifactMeta
    adapter: CompressedAdapter
    bases_ref: str | None = None  # the bases file, relative to the core's folder (metadata ``bases``)


def bases_file_name(cluster: int) -> str:
    return f"bases-{cluster:03d}.safetensors"


def core_file_name(name: str) -> str:
    return f"{CORES_DIR}/{check_name(name, 'adapter name')}.safetensors"


def bad_format(message: str, **detail: Any) -> CompressionError:
    return CompressionError(BAD_FORMAT, message, **detail)


def canonical_json(value: Any) -> str:
    # Compact and key-sorted, so the same input always gives the same metadata bytes.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def hash_tensors(tensors: dict[str, torch.Tensor]) -> str:
    """The ``basis_id`` of ``tensors``: a SHA-256 (hex) over each tensor's name, dtype, shape and raw bytes."""
    # Our own canonical encoding (name, dtype, shape, raw little-endian bytes) rather than a hash of the
    # safetensors file, so the id survives changes in the library's header layout and in our metadata.
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(canonical_json([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_core_fits(adapter: CompressedAdapter, bases: dict[str, ModuleBasis], mode: Mode) -> None:
    """Every core of ``adapter`` has a basis in ``bases`` and the shape its rank and ``mode`` need."""
    for module, core in adapter.cores.items():
        if module not in bases:
            raise CompressionError(BASIS_MISMATCH, f"core module {module!r} has no basis", module=module)
        rank = bases[module].rank
        expected = (rank, rank) if mode is Mode.FULL else (rank,)
        if tuple(core.shape) != expected:
            message = f"core {module!r} has shape {list(core.shape)}, its {mode.value} basis needs {list(expected)}"
            raise CompressionError(BASIS_MISMATCH, message, module=module)
