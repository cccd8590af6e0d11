"""A corpus of hostile adapters: each must be refused with an AdapterError carrying exactly the expected code,
without unpickling anything, without unbounded memory, and without leaking tensor bytes into the message."""

from __future__ import annotations

import io
import json
import os
import pickle
import stat
import struct
import tarfile
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from adapter_factory import (
    MARKER,
    MIB,
    MODULES,
    Q_PROJ,
    V_PROJ,
    config_bytes,
    config_dict,
    forge_weights,
    lora_factors,
    make_files,
    marker_tensor,
    named_tensors,
    parts,
    safetensors_bytes,
    tar_bytes,
    tar_gz_bomb,
    weights_bytes,
    write_dir,
    zip_bomb,
    zip_bytes,
)

from soppu.adapter import CONFIG_NAME, DEFAULT_LIMITS, WEIGHTS_NAME, Limits, read_adapter, tensor_key
from soppu.errors import AdapterError, AdapterErrorCode, SoppuError
from soppu.peft_files import PROBES_NAME

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


# --- building blocks -----------------------------------------------------------------------------------


def _with(source: Source, **limits: int) -> Built:
    return source, Limits(**limits) if limits else DEFAULT_LIMITS


def _cfg(**kwargs: Any) -> bytes:
    return config_bytes(**kwargs)


def _tensors() -> dict[str, torch.Tensor]:
    """The valid adapter's tensors, F32 made of MARKER bytes (so a leak would be visible)."""
    return named_tensors(lora_factors(fill="marker"))


def _weights() -> bytes:
    return weights_bytes(_tensors())


def _files(weights: bytes | None = None, config: bytes | None = None) -> dict[str, bytes]:
    return {CONFIG_NAME: _cfg() if config is None else config, WEIGHTS_NAME: _weights() if weights is None else weights}


def _weights_with(**replace: torch.Tensor | None) -> bytes:
    """The valid tensors with some replaced (by short name QA/QB/VA/VB) or dropped (None)."""
    names = {"QA": QA, "QB": QB, "VA": VA, "VB": VB}
    tensors = _tensors()
    for short, value in replace.items():
        if value is None:
            del tensors[names[short]]
        else:
            tensors[names[short]] = value
    return forge_weights(tensors.items())


def _trap_pickle(tmp: Path) -> bytes:
    return pickle.dumps({"lora_A": [1.0, 2.0], "payload": _Trap(tmp / TRAP_NAME)})


def _harmless_pickle() -> bytes:
    return pickle.dumps({"base_model.model.q_proj.lora_A.weight": [[0.0, 1.0]], "r": 4})


def _torch_save(tmp: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"lora_A": torch.zeros(4, 16), "payload": _Trap(tmp / TRAP_NAME)}, buf)
    return buf.getvalue()


def _valid_header() -> tuple[dict[str, Any], bytes]:
    """The header dict and data buffer of the valid weights, for forging."""
    data = _weights()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _raw_f32(shape: list[int]) -> tuple[str, list[int], bytes]:
    return ("F32", shape, marker_tensor(tuple(shape)).numpy().tobytes())


def _nan(shape: tuple[int, int], value: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    t = marker_tensor(shape).to(dtype) if dtype == torch.float32 else torch.ones(shape, dtype=dtype)
    t[1, 2] = value
    return t


def _link(name: str, kind: bytes, target: str = "/etc/passwd") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


def _zip_symlink(name: str) -> zipfile.ZipInfo:
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


def _patch_zip(data: bytes, member: str, **fields: int) -> bytes:
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


def _duplicate_key_header() -> str:
    entry = json.dumps({"dtype": "F32", "shape": [4, 16], "data_offsets": [0, 256]})
    return "{" + ",".join([f"{json.dumps(QA)}:{entry}"] * 2) + "}"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- the corpus ----------------------------------------------------------------------------------------

C = AdapterErrorCode
CASES: list[Any] = []


def case(code: AdapterErrorCode, builder: Builder, name: str) -> None:
    CASES.append(pytest.param(builder, code, id=f"{code.value}:{name}"))


# The safetensors container itself.
case(C.BAD_HEADER, lambda t: _with(_files(_weights()[:-10])), "truncated-in-the-data")
case(C.BAD_HEADER, lambda t: _with(_files(_weights()[:200])), "truncated-in-the-header")
case(
    C.BAD_HEADER,
    lambda t: _with(_files(safetensors_bytes(*_valid_header(), header_len=1_000_000))),
    "header-length-past-end-of-file",
)
case(
    C.BAD_HEADER,
    lambda t: _with(_files(safetensors_bytes(*_valid_header(), header_len=2**63))),
    "header-length-absurd",
)
case(C.BAD_HEADER, lambda t: _with(_files(), max_header_bytes=64), "header-longer-than-limit")
case(
    C.BAD_HEADER,
    lambda t: _with(_files(forge_weights(_tensors().items(), offsets={VB: (768, 100_000)}))),
    "data-offsets-out-of-range",
)
case(
    C.BAD_HEADER,
    lambda t: _with(_files(forge_weights(_tensors().items(), offsets={VB: (896, 768)}))),
    "data-offsets-reversed",
)
case(
    C.BAD_HEADER,
    lambda t: _with(_files(forge_weights(_tensors().items(), offsets={QB: (0, 256)}))),
    "overlapping-tensors",
)
case(
    C.BAD_HEADER,
    lambda t: _with(
        _files(
            safetensors_bytes(
                {
                    QA: {"dtype": "F32", "shape": [4, 16], "data_offsets": [0, 256]},
                    QB: {"dtype": "F32", "shape": [16, 4], "data_offsets": [260, 516]},
                },
                MARKER * 33,
            )
        )
    ),
    "hole-between-tensors",
)
case(C.BAD_HEADER, lambda t: _with(_files(_weights() + b"\0" * 16)), "trailing-bytes")
case(
    C.BAD_HEADER,
    lambda t: _with(_files(forge_weights([(QA, ("F32", [4, 16], MARKER * 8)), (QB, _raw_f32([16, 4]))]))),
    "byte-span-does-not-match-shape",
)
case(
    C.BAD_HEADER,
    lambda t: _with(
        _files(
            safetensors_bytes(
                _duplicate_key_header(),
                MARKER * 16,
            )
        )
    ),
    "duplicate-keys-in-header",
)
case(C.BAD_HEADER, lambda t: _with(_files(safetensors_bytes(b'{"oops": [1, 2', MARKER))), "header-not-json")
case(C.BAD_HEADER, lambda t: _with(_files(safetensors_bytes(b'{"\xff\xfe": 1}', b""))), "header-not-utf8")
case(
    C.BAD_HEADER,
    lambda t: _with(
        _files(safetensors_bytes({QA: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}, MARKER[:4]))
    ),
    "header-entry-with-extra-field",
)
case(
    C.BAD_HEADER,
    lambda t: _with(_files(safetensors_bytes({"__metadata__": {"format": 1}}))),
    "metadata-not-strings",
)
case(
    C.BAD_HEADER,
    lambda t: _with(
        _files(safetensors_bytes(b'{"x":{"dtype":"F32","shape":[1' + b"0" * 5000 + b'],"data_offsets":[0,0]}}'))
    ),
    "header-integer-with-5000-digits",
)
case(
    C.BAD_HEADER,
    lambda t: _with(_files(safetensors_bytes(b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"))),
    "header-nested-100000-deep",
)
case(C.NOT_SAFETENSORS, lambda t: _with(_files(b"This is not a safetensors file, only some text.")), "text")
case(C.NOT_SAFETENSORS, lambda t: _with(_files(b"")), "empty-weights-file")
case(C.NOT_SAFETENSORS, lambda t: _with(_files(b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'}")), "numpy-npy")
case(
    C.UNSUPPORTED_DTYPE,
    lambda t: _with(_files(forge_weights((k, torch.ones_like(v, dtype=torch.int8)) for k, v in _tensors().items()))),
    "int8-tensors",
)
case(
    C.UNSUPPORTED_DTYPE,
    lambda t: _with(
        _files(
            safetensors_bytes(
                {QA: {"dtype": "F64", "shape": [4, 16], "data_offsets": [0, 512]}},
                marker_tensor((8, 16)).numpy().tobytes(),
            )
        )
    ),
    "f64-tensor",
)
case(
    C.UNSUPPORTED_DTYPE,
    lambda t: _with(
        _files(safetensors_bytes({QA: {"dtype": "Q4_K", "shape": [4, 16], "data_offsets": [0, 64]}}, MARKER * 4))
    ),
    "unknown-dtype",
)

# Pickles: refused by name or by content, and never unpickled (the trap would create TRAP_NAME).
case(
    C.PICKLE_REJECTED,
    lambda t: _with(write_dir(t / "a", {CONFIG_NAME: _cfg(), "adapter_model.bin": _harmless_pickle()})),
    "bin-in-directory",
)
case(
    C.PICKLE_REJECTED,
    lambda t: _with(write_dir(t / "a", {CONFIG_NAME: _cfg(), "adapter_model.bin": _trap_pickle(t)})),
    "trap-bin-in-directory",
)
case(
    C.PICKLE_REJECTED,
    lambda t: _with(write_dir(t / "a", {**_files(), "adapter_model.bin": _trap_pickle(t)})),
    "bin-beside-safetensors",
)
case(
    C.PICKLE_REJECTED,
    lambda t: _with(zip_bytes({CONFIG_NAME: _cfg(), "adapter_model.bin": _trap_pickle(t)})),
    "bin-in-zip",
)
case(
    C.PICKLE_REJECTED,
    lambda t: _with(zip_bytes({**parts(make_files(), "a/"), "a/optimizer.pt": _harmless_pickle()})),
    "pt-in-zip-folder",
)
case(
    C.PICKLE_REJECTED,
    lambda t: _with(tar_bytes({CONFIG_NAME: _cfg(), "adapter_model.bin": _trap_pickle(t)}, gz=True)),
    "bin-in-tar-gz",
)
case(
    C.PICKLE_REJECTED,
    lambda t: _with({CONFIG_NAME: _cfg(), "adapter_model.bin": _trap_pickle(t)}),
    "bin-as-upload-part",
)
case(C.PICKLE_REJECTED, lambda t: _with(_files(_trap_pickle(t))), "pickle-bytes-as-safetensors")
case(C.PICKLE_REJECTED, lambda t: _with(_files(pickle.dumps({"a": 1}, protocol=2))), "protocol-2-pickle-as-safetensors")
case(
    C.PICKLE_REJECTED,
    lambda t: _with(write_dir(t / "a", _files(_trap_pickle(t)))),
    "pickle-as-safetensors-in-directory",
)
case(C.PICKLE_REJECTED, lambda t: _with(_write(t / "adapter_model.bin", _trap_pickle(t))), "path-to-a-bin-file")
case(C.PICKLE_REJECTED, lambda t: _with(_files(_torch_save(t))), "torch-save-zip-as-safetensors")
case(C.PICKLE_REJECTED, lambda t: _with(_torch_save(t)), "torch-save-zip-as-archive")
case(C.PICKLE_REJECTED, lambda t: _with(_write(t / "adapter.pt", _torch_save(t))), "path-to-a-pt-file")

# Archive member names and types.
case(
    C.UNSAFE_ARCHIVE,
    lambda t: _with(zip_bytes({"../" + CONFIG_NAME: _cfg(), WEIGHTS_NAME: _weights()})),
    "zip-dotdot-member",
)
case(C.UNSAFE_ARCHIVE, lambda t: _with(zip_bytes(parts(make_files(), "a/../../"))), "zip-dotdot-inside-path")
case(
    C.UNSAFE_ARCHIVE,
    lambda t: _with(zip_bytes({"/" + CONFIG_NAME: _cfg(), WEIGHTS_NAME: _weights()})),
    "zip-absolute-member",
)
case(C.UNSAFE_ARCHIVE, lambda t: _with(zip_bytes(parts(make_files(), "C:/adapter/"))), "zip-drive-letter")
case(
    C.UNSAFE_ARCHIVE,
    lambda t: _with(zip_bytes({"..\\" + CONFIG_NAME: _cfg(), WEIGHTS_NAME: _weights()})),
    "zip-backslash-member",
)
case(
    C.UNSAFE_ARCHIVE,
    lambda t: _with(zip_bytes([*_files().items(), (_zip_symlink("README.md"), b"/etc/passwd")])),
    "zip-symlink-member",
)
case(C.UNSAFE_ARCHIVE, lambda t: _with(zip_bytes({**_files(), "copy/" + CONFIG_NAME: _cfg()})), "zip-config-twice")
case(C.UNSAFE_ARCHIVE, lambda t: _with(zip_bytes(parts(make_files(), "a/b/"))), "zip-nested-too-deep")
case(
    C.UNSAFE_ARCHIVE,
    lambda t: _with(tar_bytes([(CONFIG_NAME, _cfg()), (_link(WEIGHTS_NAME, tarfile.SYMTYPE), b"")])),
    "tar-symlink-member",
)
case(
    C.UNSAFE_ARCHIVE,
    lambda t: _with(
        tar_bytes([(CONFIG_NAME, _cfg()), (_link(WEIGHTS_NAME, tarfile.LNKTYPE, CONFIG_NAME), b"")], gz=True)
    ),
    "tar-gz-hardlink-member",
)
case(
    C.UNSAFE_ARCHIVE,
    lambda t: _with(tar_bytes({"../" + CONFIG_NAME: _cfg(), WEIGHTS_NAME: _weights()}, gz=True)),
    "tar-gz-dotdot-member",
)
case(
    C.UNSAFE_ARCHIVE,
    lambda t: _with(tar_bytes({"/tmp/" + CONFIG_NAME: _cfg(), WEIGHTS_NAME: _weights()})),
    "tar-absolute-member",
)
case(
    C.UNSAFE_ARCHIVE,
    lambda t: _with(tar_bytes([*_files().items(), (_special("dev", tarfile.CHRTYPE), b"")])),
    "tar-device-member",
)
case(
    C.UNSAFE_ARCHIVE,
    lambda t: _with(tar_bytes([*_files().items(), (_special("fifo", tarfile.FIFOTYPE), b"")])),
    "tar-fifo-member",
)
case(C.UNSAFE_ARCHIVE, lambda t: _with({"../" + CONFIG_NAME: _cfg(), WEIGHTS_NAME: _weights()}), "upload-part-dotdot")
case(C.UNSAFE_ARCHIVE, lambda t: _with({CONFIG_NAME: _cfg(), WEIGHTS_NAME + "\x00.txt": _weights()}), "upload-part-nul")

# Sizes: declared, actual and inflated.
case(C.TOO_LARGE, lambda t: _with(zip_bomb(), max_unpacked_bytes=MIB), "zip-bomb")
case(
    C.TOO_LARGE,
    lambda t: _with(zip_bomb(WEIGHTS_NAME, include=(CONFIG_NAME,)), max_weights_bytes=MIB),
    "zip-bomb-as-weights",
)
case(C.TOO_LARGE, lambda t: _with(tar_gz_bomb("member"), max_unpacked_bytes=MIB), "tar-gz-bomb")
case(C.TOO_LARGE, lambda t: _with(tar_gz_bomb("longname"), max_unpacked_bytes=MIB), "tar-gz-bomb-in-a-long-name-record")
case(C.TOO_LARGE, lambda t: _with(_files(), max_weights_bytes=512), "weights-over-limit")
case(
    C.TOO_LARGE, lambda t: _with(write_dir(t / "a", _files()), max_weights_bytes=512), "weights-over-limit-in-directory"
)
case(C.TOO_LARGE, lambda t: _with(zip_bytes(_files()), max_weights_bytes=512), "weights-over-limit-in-zip")
case(C.TOO_LARGE, lambda t: _with(_files(), max_config_bytes=64), "config-over-limit")
case(C.TOO_LARGE, lambda t: _with(_files(config=_cfg() + b" " * (256 * 1024))), "config-over-default-limit")
case(
    C.TOO_LARGE,
    lambda t: _with(zip_bytes({**_files(), **{f"notes/{i}.txt": b"x" for i in range(10)}}), max_archive_members=8),
    "too-many-members",
)
case(C.TOO_LARGE, lambda t: _with(zip_bytes(_files()), max_archive_bytes=256), "archive-over-limit")
case(
    C.TOO_LARGE,
    lambda t: _with(_write(t / "a.zip", zip_bytes(_files())), max_archive_bytes=256),
    "archive-file-over-limit",
)
case(C.TOO_LARGE, lambda t: _with(_files(), max_tensors=3), "too-many-tensors")
case(
    C.TOO_LARGE,
    lambda t: _with(zip_bytes([(f"d{i}/", b"") for i in range(20)] + list(_files().items())), max_archive_members=8),
    "folder-entries-count-as-members",
)
# Catastrophic backtracking: Python's re would hang here; the matcher times out and refuses the config.
case(
    C.BAD_CONFIG,
    lambda t: _with(
        _files(
            forge_weights((k.replace(Q_PROJ, "a" * 60), v) for k, v in _tensors().items()),
            config=_cfg(target_modules="(a|aa)+b"),
        )
    ),
    "regex-target-modules-backtracks",
)
case(C.BAD_CONFIG, lambda t: _with(_files(config=_cfg(target_modules="q" * 600))), "regex-pattern-too-long")

# What must be there.
case(C.MISSING_CONFIG, lambda t: _with({WEIGHTS_NAME: _weights()}), "upload-without-config")
case(C.MISSING_CONFIG, lambda t: _with(zip_bytes({WEIGHTS_NAME: _weights(), "README.md": b"hi"})), "zip-without-config")
case(C.MISSING_CONFIG, lambda t: _with(write_dir(t / "empty", {})), "empty-directory")
case(
    C.MISSING_CONFIG,
    lambda t: _with(write_dir(t / "a", {"Adapter_Config.JSON": _cfg(), WEIGHTS_NAME: _weights()})),
    "config-name-in-other-case",
)
case(C.MISSING_WEIGHTS, lambda t: _with({CONFIG_NAME: _cfg()}), "upload-without-weights")
case(
    C.MISSING_WEIGHTS,
    lambda t: _with(tar_bytes({CONFIG_NAME: _cfg(), "model.safetensors": _weights()}, gz=True)),
    "tar-gz-with-full-model-name",
)
case(
    C.MISSING_WEIGHTS,
    lambda t: _with(write_dir(t / "a", {CONFIG_NAME: _cfg(), "sub/" + WEIGHTS_NAME: _weights()})),
    "directory-weights-in-subfolder",
)

# Tensor shapes and names against the config.
case(C.SHAPE_MISMATCH, lambda t: _with(_files(config=_cfg(r=8))), "config-r-8-tensors-r-4")
case(C.SHAPE_MISMATCH, lambda t: _with(_files(_weights_with(QB=marker_tensor((16, 3))))), "a-and-b-ranks-differ")
case(C.SHAPE_MISMATCH, lambda t: _with(_files(_weights_with(QA=marker_tensor((64,))))), "one-dimensional-factor")
case(C.SHAPE_MISMATCH, lambda t: _with(_files(_weights_with(QA=marker_tensor((1, 4, 16))))), "three-dimensional-factor")
case(C.SHAPE_MISMATCH, lambda t: _with(_files(config=_cfg(rank_pattern={"v_proj": 2}))), "rank-pattern-disagrees")
case(
    C.SHAPE_MISMATCH,
    lambda t: _with(_files(_weights_with(QA=torch.zeros(4, 0), QB=torch.zeros(0, 4)))),
    "empty-factors",
)
case(C.MISSING_TENSOR, lambda t: _with(_files(_weights_with(QB=None))), "lora-b-missing")
case(C.MISSING_TENSOR, lambda t: _with(_files(_weights_with(VA=None))), "lora-a-missing")
case(C.MISSING_TENSOR, lambda t: _with(_files(safetensors_bytes({}))), "no-tensors")
case(C.MISSING_TENSOR, lambda t: _with(_files(safetensors_bytes({"__metadata__": {"format": "pt"}}))), "metadata-only")
case(
    C.UNEXPECTED_TENSOR, lambda t: _with(_files(config=_cfg(target_modules=["q_proj"]))), "module-not-in-target-modules"
)
case(
    C.UNEXPECTED_TENSOR,
    lambda t: _with(_files(config=_cfg(target_modules=r".*\.q_proj"))),
    "module-not-matched-by-regex",
)
case(
    C.UNEXPECTED_TENSOR,
    lambda t: _with(_files(forge_weights([*_tensors().items(), ("lm_head.weight", marker_tensor((2, 2)))]))),
    "full-weight-smuggled-in",
)
case(
    C.UNEXPECTED_TENSOR,
    lambda t: _with(_files(forge_weights((k.replace(".weight", ".default.weight"), v) for k, v in _tensors().items()))),
    "adapter-name-left-in-keys",
)
case(
    C.UNEXPECTED_TENSOR,
    lambda t: _with(
        _files(forge_weights([*_tensors().items(), (QB.replace(".weight", ".bias"), marker_tensor((16,)))]))
    ),
    "lora-bias-tensor",
)

# Values.
case(C.NON_FINITE, lambda t: _with(_files(_weights_with(QA=_nan((4, 16), float("nan"))))), "nan")
case(C.NON_FINITE, lambda t: _with(_files(_weights_with(VB=_nan((8, 4), float("inf"))))), "inf")
case(
    C.NON_FINITE,
    lambda t: _with(_files(_weights_with(QA=torch.tensor([float("inf"), float("-inf")] * 32).view(4, 16)))),
    "inf-and-minus-inf-in-one-tensor",
)
case(
    C.NON_FINITE,
    lambda t: _with(_files(_weights_with(QB=_nan((16, 4), float("-inf"), torch.float16)))),
    "fp16-minus-inf",
)
case(C.NON_FINITE, lambda t: _with(_files(_weights_with(VA=_nan((4, 16), float("nan"), torch.bfloat16)))), "bf16-nan")

# Variants we do not serve.
case(C.UNSUPPORTED_VARIANT, lambda t: _with(_files(config=_cfg(use_dora=True))), "dora-config")
case(
    C.UNSUPPORTED_VARIANT,
    lambda t: _with(
        _files(
            forge_weights(
                [*_tensors().items(), (f"base_model.model.{Q_PROJ}.lora_magnitude_vector", marker_tensor((16,)))]
            )
        )
    ),
    "dora-magnitude-vector",
)
case(C.UNSUPPORTED_VARIANT, lambda t: _with(_files(config=_cfg(peft_type="IA3"))), "ia3")
case(C.UNSUPPORTED_VARIANT, lambda t: _with(_files(config=_cfg(peft_type="PROMPT_TUNING"))), "prompt-tuning")
case(C.UNSUPPORTED_VARIANT, lambda t: _with(_files(config=_cfg(modules_to_save=["lm_head"]))), "modules-to-save")
case(C.UNSUPPORTED_VARIANT, lambda t: _with(_files(config=_cfg(bias="lora_only"))), "trained-bias")

# The config file.
case(
    C.BAD_CONFIG,
    lambda t: _with(_files(config=json.dumps({k: v for k, v in config_dict().items() if k != "peft_type"}).encode())),
    "missing-peft-type",
)
case(C.BAD_CONFIG, lambda t: _with(_files(config=b'{"peft_type": "LORA", "r": 4,')), "invalid-json")
case(C.BAD_CONFIG, lambda t: _with(_files(config=b"[1, 2, 3]")), "json-array")
case(C.BAD_CONFIG, lambda t: _with(_files(config=b"\xff\xfe{}")), "not-utf8")
case(C.BAD_CONFIG, lambda t: _with(_files(config=_cfg(r=0))), "r-zero")
case(C.BAD_CONFIG, lambda t: _with(_files(config=_cfg(r="4"))), "r-string")
case(C.BAD_CONFIG, lambda t: _with(_files(config=_cfg(r=True))), "r-boolean")
case(C.BAD_CONFIG, lambda t: _with(_files(config=_cfg(r=4.0))), "r-float")
case(C.BAD_CONFIG, lambda t: _with(_files(config=_cfg(r=100_000))), "r-huge")
case(
    C.BAD_CONFIG,
    lambda t: _with(_files(config=b'{"peft_type": "LORA", "r": 1' + b"0" * 5000 + b"}")),
    "r-with-5000-digits",
)
case(C.BAD_CONFIG, lambda t: _with(_files(config=b"[" * 100_000 + b"]" * 100_000)), "nested-100000-deep")
case(
    C.BAD_CONFIG, lambda t: _with(_files(config=_cfg().replace(b'"lora_alpha": 8', b'"lora_alpha": NaN'))), "alpha-nan"
)
case(C.BAD_CONFIG, lambda t: _with(_files(config=_cfg(lora_alpha=-8))), "alpha-negative")
case(C.BAD_CONFIG, lambda t: _with(_files(config=_cfg(target_modules=[]))), "target-modules-empty")
case(C.BAD_CONFIG, lambda t: _with(_files(config=_cfg(target_modules="(("))), "target-modules-bad-regex")
case(C.BAD_CONFIG, lambda t: _with(_files(config=_cfg(use_rslora="yes"))), "use-rslora-not-bool")
case(C.BAD_CONFIG, lambda t: _with(_files(config=_cfg(rank_pattern={"q_proj": 0}))), "rank-pattern-zero")
case(C.BAD_CONFIG, lambda t: _with(_files(config=_cfg(alpha_pattern={"[": 4}))), "alpha-pattern-bad-regex")
case(C.BAD_CONFIG, lambda t: _with(_files(config=_cfg(base_model=123))), "base-model-not-string")

# Containers.
case(C.BAD_ARCHIVE, lambda t: _with(b"PK\x03\x04" + MARKER * 64), "corrupt-zip")
case(C.BAD_ARCHIVE, lambda t: _with(zip_bytes(_files())[:-40]), "truncated-zip")
case(C.BAD_ARCHIVE, lambda t: _with(_write(t / "a.zip", zip_bytes(_files())[:300])), "truncated-zip-file")
case(C.BAD_ARCHIVE, lambda t: _with(b"Hello! This is a plain text file, not an archive.\n" * 4), "unknown-format-bytes")
case(C.BAD_ARCHIVE, lambda t: _with(_write(t / "adapter_model.safetensors", _weights())), "bare-safetensors-file")
case(C.BAD_ARCHIVE, lambda t: _with(tar_bytes(_files(), gz=True)[:-30]), "truncated-tar-gz")
case(C.BAD_ARCHIVE, lambda t: _with(b"\x1f\x8b\x08\x00" + MARKER * 8), "corrupt-gzip")
case(C.BAD_ARCHIVE, lambda t: _with(tar_bytes(_files())[:700]), "truncated-tar")
case(C.BAD_ARCHIVE, lambda t: _with(_patch_zip(zip_bytes(_files()), CONFIG_NAME, flags=1)), "zip-encrypted-member")
case(C.BAD_ARCHIVE, lambda t: _with(_patch_zip(zip_bytes(_files()), CONFIG_NAME, method=99)), "zip-unknown-compression")
case(
    C.BAD_ARCHIVE,
    lambda t: _with(_patch_zip(zip_bomb(WEIGHTS_NAME, include=(CONFIG_NAME,)), WEIGHTS_NAME, file_size=1000)),
    "zip-member-lying-about-its-size",
)

# The uploader's probes: too big to read is refused before parsing (the rest of their rules: bad_probes tests).
case(C.BAD_PROBES, lambda t: _with({**_files(), PROBES_NAME: b"[" + b'"x",' * 20_000 + b'"x"]'}), "probes-over-64-KiB")


# --- tests ---------------------------------------------------------------------------------------------


def test_the_corpus_is_big_and_covers_every_code() -> None:
    assert len(CASES) >= 20
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids))
    covered = {p.values[1] for p in CASES}
    # Not the reader's: base_model_mismatch (test_adapter_format) and the served form's (test_served_exports, and
    # over HTTP in test_compressor_hostile).
    served = {AdapterErrorCode.LORAX_RANK_LIMIT, AdapterErrorCode.LORAX_PARTIAL_LAYERS}
    assert covered == set(AdapterErrorCode) - {AdapterErrorCode.BASE_MODEL_MISMATCH} - served


@pytest.mark.parametrize(("builder", "expected"), CASES)
def test_hostile_adapter_is_refused_with_its_code(tmp_path: Path, builder: Builder, expected: AdapterErrorCode) -> None:
    source, limits = builder(tmp_path)
    with pytest.raises(AdapterError) as excinfo:
        read_adapter(source, limits)
    error = excinfo.value
    assert error.code == expected.value, f"{error.code}: {error.message}"
    assert isinstance(error, SoppuError)

    body = error.to_dict()
    assert body["code"] == expected.value
    assert isinstance(body["message"], str) and body["message"] == str(error) and body["message"]
    text = json.dumps(body)  # JSON-ready, as the services send it
    assert len(error.message) < 1000
    for leak in (MARKER.decode(), MARKER[:8].decode(), "RAWTENSOR"):
        assert leak not in text and leak not in repr(error), "tensor bytes leaked into the error"
    assert not (tmp_path / TRAP_NAME).exists(), "a pickle was unpickled"


def test_the_pickle_trap_is_armed(tmp_path: Path) -> None:
    # The corpus relies on the trap: unpickling it really does create the marker folder.
    pickle.loads(_trap_pickle(tmp_path))
    assert (tmp_path / TRAP_NAME).is_dir()


def test_a_valid_adapter_passes_the_same_checks(tmp_path: Path) -> None:
    # The corpus starts from these valid files; they must read, or the cases would prove nothing.
    adapter = read_adapter(_files())
    assert sorted(adapter.modules) == sorted(MODULES)
    assert torch.equal(adapter.modules[Q_PROJ].a, marker_tensor((4, 16)))
    assert read_adapter(write_dir(tmp_path / "a", _files())).modules.keys() == adapter.modules.keys()
    assert read_adapter(zip_bomb(size=MIB)).modules.keys() == adapter.modules.keys()  # a small "bomb" is fine
    # The hand forger (not the library) lays out the valid tensors soundly, so forged cases change one thing.
    assert read_adapter(_files(forge_weights(_tensors().items()))).modules.keys() == adapter.modules.keys()


@pytest.mark.parametrize(
    "bomb",
    [
        lambda: zip_bomb(),
        lambda: zip_bomb(WEIGHTS_NAME, include=(CONFIG_NAME,)),
        lambda: tar_gz_bomb("member"),
        lambda: tar_gz_bomb("longname"),
    ],
    ids=["zip", "zip-as-weights", "tar-gz", "tar-gz-long-name-record"],
)
def test_bombs_fail_in_bounded_memory(bomb: Callable[[], bytes]) -> None:
    data = bomb()
    assert len(data) < MIB  # ~64 KiB on the wire, 64 MiB unpacked
    limits = Limits(max_unpacked_bytes=MIB, max_weights_bytes=MIB)
    tracemalloc.start()
    try:
        with pytest.raises(AdapterError) as excinfo:
            read_adapter(data, limits)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert excinfo.value.code == "too_large"
    assert peak < 8 * MIB, f"reading the bomb allocated {peak} bytes"


def test_unpickling_never_happens_across_sources(tmp_path: Path) -> None:
    payload = _trap_pickle(tmp_path)
    sources: list[Source] = [
        write_dir(tmp_path / "d1", {CONFIG_NAME: _cfg(), "adapter_model.bin": payload}),
        write_dir(tmp_path / "d2", {CONFIG_NAME: _cfg(), WEIGHTS_NAME: payload}),
        _write(tmp_path / "adapter_model.pkl", payload),
        zip_bytes({CONFIG_NAME: _cfg(), WEIGHTS_NAME: payload}),
        tar_bytes({CONFIG_NAME: _cfg(), "weights.ckpt": payload}, gz=True),
        {CONFIG_NAME: _cfg(), WEIGHTS_NAME: payload},
    ]
    for source in sources:
        with pytest.raises(AdapterError) as excinfo:
            read_adapter(source)
        assert excinfo.value.code == "pickle_rejected"
    assert not (tmp_path / TRAP_NAME).exists()


def test_a_missing_path_is_not_an_adapter_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_adapter(tmp_path / "nowhere")


def _many_entry_zip(entries: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i in range(entries):
            archive.writestr(f"e{i:06d}", b"")
    return buffer.getvalue()


@pytest.mark.parametrize("entries", [20_000, 70_000], ids=["zip", "zip64-entry-count"])
def test_a_zip_with_too_many_entries_is_refused_before_its_entry_list_is_parsed(entries: int) -> None:
    # Issue 13 item 10: zipfile parses the whole central directory (~600 bytes of objects per entry) before the
    # member limit could apply; the end record's count refuses it first, in the memory of its last 64 KiB.
    data = _many_entry_zip(entries)
    tracemalloc.start()
    try:
        with pytest.raises(AdapterError) as excinfo:
            read_adapter(data, DEFAULT_LIMITS)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert excinfo.value.code == "too_large"
    assert "entries" in excinfo.value.message
    assert peak < 2 * MIB, f"refusing the zip allocated {peak} bytes"


def test_a_zip_without_an_end_record_is_a_bad_archive() -> None:
    data = zip_bytes(_files())
    with pytest.raises(AdapterError) as excinfo:
        read_adapter(data[: data.rfind(b"PK\x05\x06")], DEFAULT_LIMITS)
    assert excinfo.value.code == "bad_archive"


def test_pattern_matching_has_one_budget_per_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 13 item 7: each match stayed under its 50 ms timeout, so 8,192 tensors times slow patterns cost
    # minutes of a worker thread; now every match of one upload draws on one budget. Spent (0 s here), the next
    # match refuses the upload whatever the machine's speed.
    import soppu.adapter.config

    files = make_files(rank_pattern={"v_proj": 4})
    read_adapter({CONFIG_NAME: files.config, WEIGHTS_NAME: files.weights})  # within the default budget
    monkeypatch.setattr(soppu.adapter.config, "REGEX_BUDGET_S", 0.0)
    with pytest.raises(AdapterError) as excinfo:
        read_adapter({CONFIG_NAME: files.config, WEIGHTS_NAME: files.weights})
    assert excinfo.value.code == "bad_config"
    assert "too expensive" in excinfo.value.message


def test_a_config_with_too_many_patterns_is_refused() -> None:
    files = make_files(rank_pattern={f"m{i}": 4 for i in range(257)})
    with pytest.raises(AdapterError) as excinfo:
        read_adapter({CONFIG_NAME: files.config, WEIGHTS_NAME: files.weights})
    assert excinfo.value.code == "bad_config"
