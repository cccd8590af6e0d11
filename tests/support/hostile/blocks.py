"""The building blocks of the hostile-adapter corpus (:mod:`tests.support.hostile`): the valid adapter's files to
start from (F32 tensors made of MARKER bytes, so a leak into a message would be visible), forgers for headers,
pickles, archives and zips, and a pickle trap that proves, by creating a folder, that something unpickled it."""

from __future__ import annotations

import io
import json
import os
import pickle
import stat
import struct
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from soppu.adapter import CONFIG_NAME, DEFAULT_LIMITS, WEIGHTS_NAME, Limits, tensor_key
from soppu.errors import AdapterErrorCode
from tests.support.adapter_factory import (
    Q_PROJ,
    V_PROJ,
    config_bytes,
    forge_weights,
    lora_factors,
    marker_tensor,
    named_tensors,
    weights_bytes,
)

Source = Path | bytes | dict[str, bytes]
Built = tuple[Source, Limits]
Builder = Callable[[Path], Built]

TRAP_NAME = "UNPICKLED"  # the folder a trap pickle creates (under the test's tmp_path) if anything unpickles it
QA, QB = tensor_key(Q_PROJ, "lora_A"), tensor_key(Q_PROJ, "lora_B")
VA, VB = tensor_key(V_PROJ, "lora_A"), tensor_key(V_PROJ, "lora_B")


class _Trap:
    """Unpickling this calls ``os.mkdir(path)``: proof, if the folder appears, that something unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


def built(source: Source, **limits: int) -> Built:
    return source, Limits(**limits) if limits else DEFAULT_LIMITS


def cfg(**kwargs: Any) -> bytes:
    return config_bytes(**kwargs)


def valid_tensors() -> dict[str, torch.Tensor]:
    """The valid adapter's tensors, F32 made of MARKER bytes (so a leak would be visible)."""
    return named_tensors(lora_factors(fill="marker"))


def valid_weights() -> bytes:
    return weights_bytes(valid_tensors())


def valid_files(weights: bytes | None = None, config: bytes | None = None) -> dict[str, bytes]:
    return {
        CONFIG_NAME: cfg() if config is None else config,
        WEIGHTS_NAME: valid_weights() if weights is None else weights,
    }


def weights_with(**replace: torch.Tensor | None) -> bytes:
    """The valid tensors with some replaced (by short name QA/QB/VA/VB) or dropped (None)."""
    names = {"QA": QA, "QB": QB, "VA": VA, "VB": VB}
    tensors = valid_tensors()
    for short, value in replace.items():
        if value is None:
            del tensors[names[short]]
        else:
            tensors[names[short]] = value
    return forge_weights(tensors.items())


def trap_pickle(tmp: Path) -> bytes:
    return pickle.dumps({"lora_A": [1.0, 2.0], "payload": _Trap(tmp / TRAP_NAME)})


def harmless_pickle() -> bytes:
    return pickle.dumps({"base_model.model.q_proj.lora_A.weight": [[0.0, 1.0]], "r": 4})


def torch_save_trap(tmp: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"lora_A": torch.zeros(4, 16), "payload": _Trap(tmp / TRAP_NAME)}, buf)
    return buf.getvalue()


def valid_header() -> tuple[dict[str, Any], bytes]:
    """The header dict and data buffer of the valid weights, for forging."""
    data = valid_weights()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def raw_f32(shape: list[int]) -> tuple[str, list[int], bytes]:
    return ("F32", shape, marker_tensor(tuple(shape)).numpy().tobytes())


def non_finite(shape: tuple[int, int], value: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    t = marker_tensor(shape).to(dtype) if dtype == torch.float32 else torch.ones(shape, dtype=dtype)
    t[1, 2] = value
    return t


def tar_link(name: str, kind: bytes, target: str = "/etc/passwd") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def tar_special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


def zip_symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _central_entries(data: bytes) -> dict[str, int]:
    """Offsets of the central-directory entries of a zip, by member name."""
    out, pos = {}, data.find(b"PK\x01\x02")
    while pos != -1:
        (name_len,) = struct.unpack_from("<H", data, pos + 28)
        out[data[pos + 46 : pos + 46 + name_len].decode()] = pos
        pos = data.find(b"PK\x01\x02", pos + 46 + name_len)
    return out


def patch_zip(data: bytes, member: str, **fields: int) -> bytes:
    """Rewrite fields of one member's central-directory entry (and its local header, for sizes)."""
    buf = bytearray(data)
    central = _central_entries(data)[member]
    (local,) = struct.unpack_from("<I", buf, central + 42)
    if "flags" in fields:
        struct.pack_into("<H", buf, central + 8, fields["flags"])
    if "method" in fields:
        struct.pack_into("<H", buf, central + 10, fields["method"])
    if "file_size" in fields:
        struct.pack_into("<I", buf, central + 24, fields["file_size"])
        struct.pack_into("<I", buf, local + 22, fields["file_size"])
    return bytes(buf)


def duplicate_key_header() -> str:
    entry = json.dumps({"dtype": "F32", "shape": [4, 16], "data_offsets": [0, 256]})
    return "{" + ",".join([f"{json.dumps(QA)}:{entry}"] * 2) + "}"


def write_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


class Corpus(list[Any]):
    """Cases as ``pytest.param(builder, expected code, id="code:name")``: one list per module of the corpus."""

    def case(self, code: AdapterErrorCode, builder: Builder, name: str) -> None:
        self.append(pytest.param(builder, code, id=f"{code.value}:{name}"))
