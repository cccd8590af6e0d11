"""Validation of a safetensors file's header before any tensor is read.

A safetensors file is ``u64 little-endian N`` + ``N bytes of JSON header`` + a data buffer. The header maps
tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the buffer) plus an
optional ``__metadata__`` of string pairs. We check, without touching tensor data: the header length is
bounded and inside the file; the JSON parses, has no duplicate keys and has the right types; every tensor's
byte span equals its shape times its dtype size, lies inside the buffer, and the spans tile the buffer exactly
(no overlaps, no holes), which is also what the safetensors loader requires.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

from soppu.adapter.limits import DEFAULT_LIMITS, Limits
from soppu.errors import AdapterError
from soppu.errors import AdapterErrorCode as Code

__all__ = ["ALLOWED_DTYPES", "TensorSpec", "check_safetensors_header"]

# Every dtype the format defines, with its size in bytes; only ALLOWED_DTYPES are accepted for adapters.
_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
ALLOWED_DTYPES = frozenset({"F32", "F16", "BF16"})
_METADATA_KEY = "__metadata__"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One tensor as the header declares it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _bad(message: str, **detail: Any) -> AdapterError:
    return AdapterError(Code.BAD_HEADER, message, **detail)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _bad(f"safetensors header has duplicate key {key!r}", key=key)
        seen[key] = value
    return seen


def _parse_entry(name: str, entry: Any) -> TensorSpec:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _bad(f"tensor {name!r}: entry must have exactly dtype, shape and data_offsets", tensor=name)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        raise _bad(f"tensor {name!r}: dtype must be a string", tensor=name)
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _bad(f"tensor {name!r}: shape must be a list of non-negative integers", tensor=name)
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _bad(f"tensor {name!r}: data_offsets must be [begin, end] with 0 <= begin <= end", tensor=name)
    return TensorSpec(name, dtype, tuple(shape), offsets[0], offsets[1])


def check_safetensors_header(
    data: bytes | memoryview, limits: Limits = DEFAULT_LIMITS
) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """Validate the header of the safetensors file ``data``; return its tensor specs and metadata.

    Raises AdapterError with code ``not_safetensors`` when the bytes are not safetensors at all,
    ``bad_header`` when the header is malformed or inconsistent, ``too_large`` past the limits, and
    ``unsupported_dtype`` for any dtype other than fp32/fp16/bf16.
    """
    size = len(data)
    # Byte 8 opens the JSON header; anything else (a pickle, a zip, text) is not safetensors at all.
    if size < 10 or bytes(data[8:9]) != b"{":
        raise AdapterError(Code.NOT_SAFETENSORS, "weights file is not in safetensors format")
    (header_len,) = struct.unpack("<Q", bytes(data[:8]))
    if header_len > limits.max_header_bytes:
        raise _bad(f"safetensors header length {header_len} exceeds the bound {limits.max_header_bytes}")
    if 8 + header_len > size:
        raise _bad(f"safetensors header length {header_len} runs past the end of the {size}-byte file")
    try:
        header = json.loads(bytes(data[8 : 8 + header_len]).decode("utf-8"), object_pairs_hook=_reject_duplicates)
    # ValueError covers bad UTF-8, bad JSON and integers past Python's digit limit; RecursionError, deep nesting.
    except (ValueError, RecursionError) as e:
        raise _bad(f"safetensors header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise _bad("safetensors header must be a JSON object")

    metadata = header.pop(_METADATA_KEY, None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _bad("safetensors __metadata__ must map strings to strings")
    if len(header) > limits.max_tensors:
        raise AdapterError(Code.TOO_LARGE, f"{len(header)} tensors exceed the limit of {limits.max_tensors}")

    specs = {name: _parse_entry(name, entry) for name, entry in header.items()}
    buffer_len = size - 8 - header_len
    cursor = 0
    for spec in sorted(specs.values(), key=lambda s: (s.begin, s.end)):
        if spec.end > buffer_len:
            raise _bad(
                f"tensor {spec.name!r}: data_offsets end {spec.end} is beyond the {buffer_len}-byte data buffer",
                tensor=spec.name,
            )
        if spec.begin != cursor:
            kind = "overlaps another tensor" if spec.begin < cursor else "leaves a hole before it"
            raise _bad(f"tensor {spec.name!r}: data {kind}", tensor=spec.name)
        cursor = spec.end
        itemsize = _DTYPE_SIZES.get(spec.dtype)
        if itemsize is not None and spec.end - spec.begin != math.prod(spec.shape) * itemsize:
            raise _bad(
                f"tensor {spec.name!r}: {spec.end - spec.begin} bytes do not hold shape {list(spec.shape)} "
                f"of {spec.dtype}",
                tensor=spec.name,
            )
    if cursor != buffer_len:
        raise _bad(f"{buffer_len - cursor} trailing bytes after the last tensor")

    for spec in specs.values():
        if spec.dtype not in ALLOWED_DTYPES:
            raise AdapterError(
                Code.UNSUPPORTED_DTYPE,
                f"tensor {spec.name!r} has dtype {spec.dtype}; adapters must be F32, F16 or BF16",
                tensor=spec.name,
                dtype=spec.dtype,
            )
    return specs, metadata
