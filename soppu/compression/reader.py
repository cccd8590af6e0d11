"""Reading the compressed format (described in :mod:`soppu.compression.format`), validating everything: format,
version and kind (else ``bad_compressed_format``), tensor names and shapes against the metadata, finite values,
the bases' content against their ``basis_id`` (a mismatch is a corrupt file), and a core's ``basis_id``, ranks
and mode against its bases (``basis_mismatch``). Tensors come back in float32 whatever their storage dtype.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from soppu.adapter.safetensors_check import check_safetensors_header
from soppu.compression.artifacts import (
    BASIS_MISMATCH,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    ArtifactMeta,
    BasesFile,
    CoreFile,
    bad_format,
    bases_file_name,
    check_core_fits,
    core_file_name,
    hash_tensors,
)
from soppu.compression.model import Cluster, CompressedAdapter, Compression, Mode, ModuleBasis
from soppu.errors import AdapterError, CompressionError, InvalidName

__all__ = ["read_bases", "read_compression", "read_core"]


def _check_identity(metadata: dict[str, str], kind: str) -> None:
    if metadata.get("format") != FORMAT:
        raise bad_format(f"not a {FORMAT} file (format={metadata.get('format')!r})", format=metadata.get("format"))
    if metadata.get("format_version") != FORMAT_VERSION:
        version = metadata.get("format_version")
        raise bad_format(f"unknown {FORMAT} format_version {version!r}; this reader knows {FORMAT_VERSION!r}")
    if metadata.get("kind") != kind:
        raise bad_format(f"expected a {kind} file, got kind={metadata.get('kind')!r}", kind=metadata.get("kind"))


def _load(data: bytes, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        _specs, metadata = check_safetensors_header(data)
    except AdapterError as e:  # the adapter reader's header checks, reported in our own error tree
        raise bad_format(f"{kind} file is not a valid safetensors file: {e.message}") from e
    _check_identity(metadata, kind)
    try:
        tensors = load_safetensors(bytes(data))
    except SafetensorError as e:
        raise bad_format(f"{kind} file could not be loaded: {e}") from e
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise bad_format(f"tensor {name!r} has NaN or Inf values", tensor=name)
    return tensors, metadata


def _float32(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.to(torch.float32) for name, tensor in tensors.items()}


def _json_field(metadata: dict[str, str], key: str) -> Any:
    try:
        return json.loads(metadata[key])
    except (KeyError, ValueError, RecursionError) as e:
        raise bad_format(f"metadata field {key!r} is missing or not valid JSON", field=key) from e


def _parse_meta(metadata: dict[str, str]) -> ArtifactMeta:
    try:
        mode = Mode(metadata["mode"])
    except (KeyError, ValueError) as e:
        raise bad_format(f"unknown mode {metadata.get('mode')!r}", field="mode") from e
    targets = _json_field(metadata, "target_modules")
    if isinstance(targets, list) and all(isinstance(t, str) for t in targets):
        targets = tuple(targets)
    elif not isinstance(targets, str):
        raise bad_format("target_modules must be a list of names or a pattern", field="target_modules")
    base_model = metadata.get("base_model")
    if not isinstance(base_model, str):
        raise bad_format("metadata field 'base_model' is missing", field="base_model")
    return ArtifactMeta(mode, base_model or None, targets)


def _positive_int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise bad_format(f"{what} must be a positive integer, got {value!r}", field=what)
    return value


def _modules_table(
    metadata: dict[str, str], tensors: dict[str, torch.Tensor], suffixes: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    table = _json_field(metadata, "modules")
    if not isinstance(table, dict) or not table or not all(isinstance(v, dict) for v in table.values()):
        raise bad_format("metadata field 'modules' must map module names to objects", field="modules")
    expected = {f"{module}.{suffix}" for module in table for suffix in suffixes}
    if expected != set(tensors):
        extra, missing = sorted(set(tensors) - expected), sorted(expected - set(tensors))
        raise bad_format(f"tensors do not match the modules metadata (extra {extra}, missing {missing})")
    return table


def _check_shape(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise bad_format(f"tensor {name!r} has shape {list(tensor.shape)}, metadata says {list(shape)}", tensor=name)


def read_bases(data: bytes) -> BasesFile:
    """Read and validate a bases file: ``(basis_id, meta, {module: ModuleBasis})``, tensors in float32."""
    stored, metadata = _load(data, "bases")
    # Hash what the file holds, at its stored dtype: the id must name exactly these bytes.
    basis_id = metadata.get("basis_id")
    if basis_id != hash_tensors(stored):
        message = "the bases' content does not match their basis_id (corrupt or altered file)"
        raise bad_format(message, basis_id=basis_id)
    meta, tensors = _parse_meta(metadata), _float32(stored)
    bases = {}
    for module, info in sorted(_modules_table(metadata, tensors, ("U", "V")).items()):
        rank = _positive_int(info.get("rank"), f"{module}.rank")
        d_out = _positive_int(info.get("d_out"), f"{module}.d_out")
        d_in = _positive_int(info.get("d_in"), f"{module}.d_in")
        u, v = tensors[f"{module}.U"], tensors[f"{module}.V"]
        _check_shape(f"{module}.U", u, (d_out, rank))
        _check_shape(f"{module}.V", v, (d_in, rank))
        bases[module] = ModuleBasis(u=u, v=v)
    return BasesFile(basis_id, meta, bases)


def _check_pair(core: CoreFile, bases: BasesFile) -> None:
    if core.basis_id != bases.basis_id:
        message = f"core {core.adapter.name!r} belongs to basis {core.basis_id}, not {bases.basis_id}"
        raise CompressionError(BASIS_MISMATCH, message, core_basis_id=core.basis_id, basis_id=bases.basis_id)
    if core.meta != bases.meta:
        raise CompressionError(BASIS_MISMATCH, f"core {core.adapter.name!r} and its bases disagree on {core.meta}")
    check_core_fits(core.adapter, bases.bases, core.meta.mode)


# Per-module core metadata that is optional (null when unknown) and the type each holds.
_CORE_EXTRAS: dict[str, type] = {"source_rank": int, "source_scaling": float, "error": float}


def _optional_number(value: Any, what: str, kind: type) -> Any:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or (kind is int and not isinstance(value, int)):
        raise bad_format(f"{what} must be a number, got {value!r}", field=what)
    return kind(value)


def read_core(data: bytes, *, bases: BasesFile | None = None, cluster: int = 0) -> CoreFile:
    """Read and validate a core file. With ``bases``, also check that it belongs to them (``basis_mismatch``).
    ``cluster`` is the index recorded in the returned adapter (a core file does not know it; the manifest does).
    """
    stored, metadata = _load(data, "core")
    meta, tensors = _parse_meta(metadata), _float32(stored)
    name, basis_id = metadata.get("name"), metadata.get("basis_id")
    if not isinstance(name, str) or not name or not isinstance(basis_id, str) or not basis_id:
        raise bad_format("core metadata needs a name and a basis_id")
    cores: dict[str, torch.Tensor] = {}
    extras: dict[str, dict[str, Any]] = {key: {} for key in _CORE_EXTRAS}
    for module, info in sorted(_modules_table(metadata, tensors, ("S",)).items()):
        rank = _positive_int(info.get("rank"), f"{module}.rank")
        if info.get("scaling") != 1.0:  # version 1 folds every scaling into S; anything else is not ours
            raise bad_format(f"{module}: serve-time scaling must be 1.0, got {info.get('scaling')!r}", module=module)
        core = tensors[f"{module}.S"]
        _check_shape(f"{module}.S", core, (rank, rank) if meta.mode is Mode.FULL else (rank,))
        cores[module] = core
        for key, kind in _CORE_EXTRAS.items():
            value = _optional_number(info.get(key), f"{module}.{key}", kind)
            if value is not None:
                extras[key][module] = value
    adapter = CompressedAdapter(name, cluster, cores, extras["source_rank"], extras["source_scaling"], extras["error"])
    bases_ref = metadata.get("bases")
    core_file = CoreFile(basis_id, meta, adapter, bases_ref if isinstance(bases_ref, str) and bases_ref else None)
    if bases is not None:
        _check_pair(core_file, bases)
    return core_file


def _manifest(directory: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise bad_format(f"{directory / MANIFEST_NAME} is missing or not valid JSON: {e}") from e
    if not isinstance(manifest, dict):
        raise bad_format(f"{MANIFEST_NAME} must hold a JSON object")
    _check_identity({k: v for k, v in manifest.items() if isinstance(v, str)}, "manifest")
    clusters, adapters = manifest.get("clusters"), manifest.get("adapters")
    if not isinstance(clusters, list) or not isinstance(adapters, list):
        raise bad_format(f"{MANIFEST_NAME} needs 'clusters' and 'adapters' lists")
    return manifest


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise bad_format(f"{path} cannot be read: {e}") from e


def read_compression(directory: Path | str) -> Compression:
    """Read a directory written by :func:`write_compression`, validating every file and every pairing."""
    directory = Path(directory)
    manifest = _manifest(directory)
    loaded: list[BasesFile] = []
    for index, entry in enumerate(manifest["clusters"]):
        # Paths come from the layout, never from the manifest, so a manifest cannot point outside the directory.
        if not isinstance(entry, dict) or entry.get("index") != index:
            raise bad_format(f"{MANIFEST_NAME}: cluster entry {index} is malformed")
        bases = read_bases(_read_file(directory / bases_file_name(index)))
        if entry.get("basis_id") != bases.basis_id:
            raise CompressionError(BASIS_MISMATCH, f"cluster {index}: the manifest names another basis", cluster=index)
        loaded.append(bases)
    if not loaded:
        raise bad_format(f"{MANIFEST_NAME} lists no clusters")
    adapters = []
    for entry in manifest["adapters"]:
        cluster = entry.get("cluster") if isinstance(entry, dict) else None
        if not isinstance(cluster, int) or isinstance(cluster, bool) or not 0 <= cluster < len(loaded):
            raise bad_format(f"{MANIFEST_NAME}: adapter entry {entry!r} has no valid cluster")
        try:
            path = directory / core_file_name(str(entry.get("name")))
        except InvalidName as e:
            raise bad_format(f"{MANIFEST_NAME}: adapter name {entry.get('name')!r} is not valid") from e
        core = read_core(_read_file(path), bases=loaded[cluster], cluster=cluster)
        if core.adapter.name != entry["name"]:
            raise bad_format(f"{path.name} holds adapter {core.adapter.name!r}, the manifest says {entry['name']!r}")
        adapters.append(core.adapter)
    meta = loaded[0].meta
    if any(bases.meta != meta for bases in loaded):
        raise bad_format("the clusters' bases disagree on mode, base model or target modules")
    return Compression(meta.mode, meta.base_model, meta.target_modules, [Cluster(b.bases) for b in loaded], adapters)
