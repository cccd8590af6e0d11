"""Builders for PEFT LoRA adapters in memory, valid ones and forged ones, for the adapter-format tests.

Everything here is deterministic (seeded) and small: two modules of a toy model, rank 4 by default. The
low-level builders (:func:`safetensors_bytes`, :func:`forge_weights`, :func:`zip_bytes`, :func:`tar_bytes`)
write exactly what they are given, so tests can forge headers and archives that no honest writer produces.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import struct
import tarfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors

from soppu.adapter import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterFiles,
    LoraAdapter,
    LoraModule,
    parse_config,
    tensor_key,
)

Q_PROJ = "model.layers.0.self_attn.q_proj"
V_PROJ = "model.layers.0.self_attn.v_proj"
# module path -> (d_out, d_in) of the adapted weight
MODULES: dict[str, tuple[int, int]] = {Q_PROJ: (16, 16), V_PROJ: (8, 16)}
BASE_MODEL = "toy/base-model"

# F32 tensor data made of this ASCII pattern: every 4-byte word is a finite float, and an error message that
# leaked tensor bytes would show it verbatim.
MARKER = b"RAWTENSORBYTES!!"

MIB = 1024 * 1024
# What a safetensors header entry's dtype is called for each torch dtype (the ones tests forge).
ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int8: "I8"}


# --- configs -------------------------------------------------------------------------------------------


def config_dict(
    *,
    r: int = 4,
    lora_alpha: float = 8,
    target_modules: Iterable[str] | str = ("q_proj", "v_proj"),
    base_model: str | None = BASE_MODEL,
    **extra: Any,
) -> dict[str, Any]:
    """An ``adapter_config.json`` as PEFT's ``LoraConfig.save_pretrained`` writes it for plain LoRA."""
    cfg: dict[str, Any] = {
        "alpha_pattern": {},
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "lora_alpha": lora_alpha,
        "lora_dropout": 0.05,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "rank_pattern": {},
        "revision": None,
        "target_modules": target_modules if isinstance(target_modules, str) else list(target_modules),
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
    }
    cfg.update(extra)
    return cfg


def config_bytes(cfg: Mapping[str, Any] | None = None, **kwargs: Any) -> bytes:
    return json.dumps(dict(cfg) if cfg is not None else config_dict(**kwargs), indent=2).encode()


# --- tensors -------------------------------------------------------------------------------------------


def marker_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """An F32 tensor whose raw bytes are :data:`MARKER` repeated (finite values)."""
    n = 4 * int(torch.Size(shape).numel())
    raw = bytearray((MARKER * (n // len(MARKER) + 1))[:n])
    return torch.frombuffer(raw, dtype=torch.float32).reshape(shape).clone()


def lora_factors(
    modules: Mapping[str, tuple[int, int]] = MODULES,
    *,
    r: int = 4,
    ranks: Mapping[str, int] | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    fill: str = "random",
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module -> (A, B) with A (rank x d_in) and B (d_out x rank); ``ranks`` overrides ``r`` per module.

    ``fill="random"`` draws normal values (B nonzero, unlike a fresh PEFT init, so deltas are not zero);
    ``fill="marker"`` gives F32 factors made of :data:`MARKER` bytes.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for module, (d_out, d_in) in modules.items():
        rank = (ranks or {}).get(module, r)
        if fill == "marker":
            a, b = marker_tensor((rank, d_in)), marker_tensor((d_out, rank))
        else:
            a = torch.randn(rank, d_in, generator=gen).to(dtype)
            b = torch.randn(d_out, rank, generator=gen).to(dtype)
        out[module] = (a, b)
    return out


def named_tensors(factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The factors under the names PEFT stores them with in ``adapter_model.safetensors``."""
    tensors = {}
    for module, (a, b) in factors.items():
        tensors[tensor_key(module, "lora_A")] = a
        tensors[tensor_key(module, "lora_B")] = b
    return tensors


def weights_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """A genuine safetensors file (what PEFT writes), via the safetensors library."""
    return save_safetensors({k: v.contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})


# --- adapters ------------------------------------------------------------------------------------------


def make_adapter(
    modules: Mapping[str, tuple[int, int]] = MODULES,
    *,
    r: int = 4,
    lora_alpha: float = 8,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    ranks: Mapping[str, int] | None = None,
    **config: Any,
) -> LoraAdapter:
    """A valid adapter built directly (not through the reader). ``config`` goes to :func:`config_dict`
    (e.g. ``use_rslora=True``, ``rank_pattern={...}``, ``target_modules=...``)."""
    cfg = parse_config(config_bytes(r=r, lora_alpha=lora_alpha, **config))
    factors = lora_factors(modules, r=r, ranks=ranks, dtype=dtype, seed=seed)
    return LoraAdapter(
        config=cfg,
        modules={m: LoraModule(b=b, a=a, scaling=cfg.scaling_for(m)) for m, (a, b) in factors.items()},
    )


def make_files(
    modules: Mapping[str, tuple[int, int]] = MODULES,
    *,
    r: int = 4,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    ranks: Mapping[str, int] | None = None,
    fill: str = "random",
    **config: Any,
) -> AdapterFiles:
    """Raw files as PEFT writes them (its config layout, safetensors via the library)."""
    factors = lora_factors(modules, r=r, ranks=ranks, dtype=dtype, seed=seed, fill=fill)
    return AdapterFiles(config=config_bytes(r=r, **config), weights=weights_bytes(named_tensors(factors)))


def parts(files: AdapterFiles, prefix: str = "") -> dict[str, bytes]:
    """The two files as a name -> bytes mapping (optionally under a folder ``prefix``)."""
    return {prefix + CONFIG_NAME: files.config, prefix + WEIGHTS_NAME: files.weights}


def write_dir(directory: Path, members: Mapping[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in members.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return directory


# --- forged safetensors --------------------------------------------------------------------------------


def safetensors_bytes(
    header: Mapping[str, Any] | bytes | str,
    data: bytes = b"",
    *,
    header_len: int | None = None,
) -> bytes:
    """``u64 header length`` + header + data, exactly as given.

    ``header`` is a dict (dumped as JSON, no padding), or raw JSON text/bytes (to forge duplicate keys or
    broken JSON). ``header_len`` overrides the length field (to make it lie).
    """
    if isinstance(header, Mapping):
        raw = json.dumps(header, separators=(",", ":")).encode()
    elif isinstance(header, str):
        raw = header.encode()
    else:
        raw = header
    return struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data


def forge_weights(
    entries: Iterable[tuple[str, torch.Tensor | tuple[str, list[int], bytes]]],
    *,
    metadata: Mapping[str, str] | None = None,
    offsets: Mapping[str, tuple[int, int]] | None = None,
) -> bytes:
    """A safetensors file built by hand from ``(name, tensor)`` or ``(name, (dtype, shape, raw bytes))``.

    Tensors are laid out back to back in the given order; ``offsets`` overrides a tensor's data_offsets
    (the data is still appended as laid out), so a test can make offsets overlap, leave holes or run off.
    """
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    data = bytearray()
    for name, value in entries:
        if isinstance(value, torch.Tensor):
            dtype, shape = ST_DTYPES[value.dtype], list(value.shape)
            raw = value.contiguous().view(torch.uint8).numpy().tobytes()
        else:
            dtype, shape, raw = value
        begin, end = (offsets or {}).get(name, (len(data), len(data) + len(raw)))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
        data += raw
    return safetensors_bytes(header, bytes(data))


# --- archives ------------------------------------------------------------------------------------------


def zip_bytes(
    members: Mapping[str, bytes] | Iterable[tuple[str | zipfile.ZipInfo, bytes]],
    *,
    compression: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    """A zip holding ``members`` as given (names are not sanitized; a ZipInfo sets attributes)."""
    items = members.items() if isinstance(members, Mapping) else members
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in items:
            zf.writestr(name, data)
    return buf.getvalue()


def tar_bytes(
    members: Mapping[str, bytes] | Iterable[tuple[str | tarfile.TarInfo, bytes]],
    *,
    gz: bool = False,
) -> bytes:
    """A .tar (or .tar.gz) holding ``members``; a TarInfo member keeps its type (link, device, ...)."""
    items = members.items() if isinstance(members, Mapping) else members
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for name, data in items:
            info = name if isinstance(name, tarfile.TarInfo) else tarfile.TarInfo(name)
            if info.isreg():
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def _zeros(total: int) -> Iterable[bytes]:
    chunk = bytes(MIB)
    for start in range(0, total, MIB):
        yield chunk[: min(MIB, total - start)]


@functools.cache
def zip_bomb(
    name: str = "padding.dat", size: int = 64 * MIB, *, include: tuple[str, ...] = (CONFIG_NAME, WEIGHTS_NAME)
) -> bytes:
    """A ~64 KiB zip that unpacks to ``size`` zero bytes in member ``name`` (streamed: never held in memory),
    after the valid adapter files named in ``include``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for part, data in parts(make_files()).items():
            if part in include:
                zf.writestr(part, data)
        with zf.open(name, "w") as out:
            for chunk in _zeros(size):
                out.write(chunk)
    return buf.getvalue()


@functools.cache
def tar_gz_bomb(kind: str = "member", size: int = 64 * MIB) -> bytes:
    """A ~64 KiB .tar.gz that inflates to ``size`` zero bytes, streamed through gzip chunk by chunk.

    ``kind="member"``: a regular member ``padding.dat`` whose header declares the full size.
    ``kind="longname"``: a GNU long-name record of ``size`` bytes, which tarfile would buffer whole before
    any member is seen, so only a bound on the inflated stream can stop it.
    """
    if kind == "member":
        info = tarfile.TarInfo("padding.dat")
        info.size = size
        head = info.tobuf(tarfile.PAX_FORMAT)
    elif kind == "longname":
        info = tarfile.TarInfo("././@LongLink")
        info.type = tarfile.GNUTYPE_LONGNAME
        info.size = size
        head = info.tobuf(tarfile.GNU_FORMAT)
    else:
        raise ValueError(kind)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(head)
        for chunk in _zeros(size):
            gz.write(chunk)
        gz.write(bytes(1024))  # end-of-archive blocks
    return buf.getvalue()
