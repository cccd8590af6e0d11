"""The compressed format on disk: shared bases and per-adapter cores as safetensors, plus a JSON manifest.

Both kinds of safetensors file carry string metadata (``__metadata__``) saying what they are. Common fields:
``format`` = ``"soppu-jd"``; ``format_version`` = ``"1"`` (a reader refuses any other value); ``kind``;
``mode`` (``"full"`` / ``"diag"``); ``base_model`` (``""`` when unknown); ``target_modules`` (JSON: a list of
names or a pattern string); ``basis_id``; and ``modules`` (JSON, per module, below).

- **Bases file**, ``kind="bases"``, one per cluster (``bases-<k>.safetensors`` in a compression directory,
  ``bases.safetensors`` in the store): tensors ``<module>.U`` (d_out x R) and ``<module>.V`` (d_in x R), with
  orthonormal columns; ``modules`` = ``{module: {"rank": R, "d_out": d_out, "d_in": d_in}}``; ``basis_id`` is
  the SHA-256 (hex) of the tensors as stored (:func:`compute_basis_id`), so a core names the basis it belongs
  to and a changed basis can never be paired with an old core.
- **Core file**, ``kind="core"``, one per adapter, a few KB: tensors ``<module>.S``, R x R (full) or the
  length-R diagonal (diag); ``name`` (the adapter's); ``basis_id`` (its bases'); ``modules`` =
  ``{module: {"rank": R, "scaling": 1.0, "source_rank": r, "source_scaling": s, "error": e}}``. ``scaling`` is
  what serving applies to ``U S V^T``: always 1, since the LoRA scaling ``s`` is folded into ``S``;
  ``source_rank``/``source_scaling`` describe the original LoRA, ``error`` is its relative Frobenius error
  (``null`` when unknown). Optional ``bases``: where the bases file lies, as a ``/``-separated path relative
  to the core file's folder (``../bases-000.safetensors`` in a compression directory); a server given only a
  core's location finds the bases through it, and the ``basis_id`` still decides whether they pair.

**Compression directory** (:func:`write_compression`)::

    DIR/bases-000.safetensors       cluster 0's bases (index zero padded to 3 digits)
    DIR/cores/<name>.safetensors    one core per adapter (names follow soppu.store.layout.check_name)
    DIR/compression.json            the manifest: the common fields, dtype, clusters, adapter -> cluster/files

Tensors are float32 unless a storage ``dtype`` (float16, bfloat16) is asked for; readers return float32, since
every computation on them runs in float32. Writing is deterministic: identical input gives byte-identical files
(sorted JSON keys, no timestamps). Reading validates everything: format, version and kind (else
``bad_compressed_format``), tensor names and shapes against the metadata, finite values, the bases' content
against their ``basis_id`` (a mismatch is a corrupt file: ``bad_compressed_format``), and a core's ``basis_id``,
ranks and mode against its bases (``basis_mismatch``).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from soppu.adapter.safetensors_check import check_safetensors_header
from soppu.compression.model import Cluster, CompressedAdapter, Compression, Mode, ModuleBasis
from soppu.errors import AdapterError, CompressionError, InvalidName
from soppu.store.layout import check_name

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "STORAGE_DTYPES",
    "ArtifactMeta",
    "BasesFile",
    "CoreFile",
    "bases_bytes",
    "bases_file_name",
    "compute_basis_id",
    "core_bytes",
    "core_file_name",
    "read_bases",
    "read_compression",
    "read_core",
    "write_compression",
]

FORMAT = "soppu-jd"
FORMAT_VERSION = "1"
MANIFEST_NAME = "compression.json"
CORES_DIR = "cores"
STORAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
_JSON_FIELDS = frozenset({"target_modules", "modules"})  # metadata values stored as JSON text
_BAD = "bad_compressed_format"
_MISMATCH = "basis_mismatch"


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


# --- writing -------------------------------------------------------------------------------------------


def _bad(message: str, **detail: Any) -> CompressionError:
    return CompressionError(_BAD, message, **detail)


def _dumps(value: Any) -> str:
    # Compact and key-sorted, so the same input always gives the same metadata bytes.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


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
    return {key: _dumps(value) if key in _JSON_FIELDS else str(value) for key, value in fields.items()}


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


def _hash_tensors(tensors: dict[str, torch.Tensor]) -> str:
    # Our own canonical encoding (name, dtype, shape, raw little-endian bytes) rather than a hash of the
    # safetensors file, so the id survives changes in the library's header layout and in our metadata.
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(_dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def compute_basis_id(cluster: Cluster, dtype: torch.dtype = torch.float32) -> str:
    """The content hash of ``cluster``'s bases as stored at ``dtype`` (the ``basis_id`` of its bases file)."""
    return _hash_tensors(_bases_tensors(cluster.bases, dtype))


def _bases_file(cluster: Cluster, compression: Compression, dtype: torch.dtype) -> tuple[bytes, str]:
    if not cluster.bases:
        raise _bad("a cluster without bases cannot be written")
    tensors = _bases_tensors(cluster.bases, dtype)
    basis_id = _hash_tensors(tensors)
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
    _check_core_fits(adapter, cluster.bases, Mode(compression.mode))
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
        raise _bad("adapter names in a compression must be unique")
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


# --- reading -------------------------------------------------------------------------------------------


def _check_identity(metadata: dict[str, str], kind: str) -> None:
    if metadata.get("format") != FORMAT:
        raise _bad(f"not a {FORMAT} file (format={metadata.get('format')!r})", format=metadata.get("format"))
    if metadata.get("format_version") != FORMAT_VERSION:
        version = metadata.get("format_version")
        raise _bad(f"unknown {FORMAT} format_version {version!r}; this reader knows {FORMAT_VERSION!r}")
    if metadata.get("kind") != kind:
        raise _bad(f"expected a {kind} file, got kind={metadata.get('kind')!r}", kind=metadata.get("kind"))


def _load(data: bytes, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        _specs, metadata = check_safetensors_header(data)
    except AdapterError as e:  # the adapter reader's header checks, reported in our own error tree
        raise _bad(f"{kind} file is not a valid safetensors file: {e.message}") from e
    _check_identity(metadata, kind)
    try:
        tensors = load_safetensors(bytes(data))
    except SafetensorError as e:
        raise _bad(f"{kind} file could not be loaded: {e}") from e
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise _bad(f"tensor {name!r} has NaN or Inf values", tensor=name)
    return tensors, metadata


def _float32(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.to(torch.float32) for name, tensor in tensors.items()}


def _json_field(metadata: dict[str, str], key: str) -> Any:
    try:
        return json.loads(metadata[key])
    except (KeyError, ValueError, RecursionError) as e:
        raise _bad(f"metadata field {key!r} is missing or not valid JSON", field=key) from e


def _parse_meta(metadata: dict[str, str]) -> ArtifactMeta:
    try:
        mode = Mode(metadata["mode"])
    except (KeyError, ValueError) as e:
        raise _bad(f"unknown mode {metadata.get('mode')!r}", field="mode") from e
    targets = _json_field(metadata, "target_modules")
    if isinstance(targets, list) and all(isinstance(t, str) for t in targets):
        targets = tuple(targets)
    elif not isinstance(targets, str):
        raise _bad("target_modules must be a list of names or a pattern", field="target_modules")
    base_model = metadata.get("base_model")
    if not isinstance(base_model, str):
        raise _bad("metadata field 'base_model' is missing", field="base_model")
    return ArtifactMeta(mode, base_model or None, targets)


def _positive_int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _bad(f"{what} must be a positive integer, got {value!r}", field=what)
    return value


def _modules_table(
    metadata: dict[str, str], tensors: dict[str, torch.Tensor], suffixes: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    table = _json_field(metadata, "modules")
    if not isinstance(table, dict) or not table or not all(isinstance(v, dict) for v in table.values()):
        raise _bad("metadata field 'modules' must map module names to objects", field="modules")
    expected = {f"{module}.{suffix}" for module in table for suffix in suffixes}
    if expected != set(tensors):
        extra, missing = sorted(set(tensors) - expected), sorted(expected - set(tensors))
        raise _bad(f"tensors do not match the modules metadata (extra {extra}, missing {missing})")
    return table


def _check_shape(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise _bad(f"tensor {name!r} has shape {list(tensor.shape)}, metadata says {list(shape)}", tensor=name)


def read_bases(data: bytes) -> BasesFile:
    """Read and validate a bases file: ``(basis_id, meta, {module: ModuleBasis})``, tensors in float32."""
    stored, metadata = _load(data, "bases")
    # Hash what the file holds, at its stored dtype: the id must name exactly these bytes.
    basis_id = metadata.get("basis_id")
    if basis_id != _hash_tensors(stored):
        raise _bad("the bases' content does not match their basis_id (corrupt or altered file)", basis_id=basis_id)
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


def _check_core_fits(adapter: CompressedAdapter, bases: dict[str, ModuleBasis], mode: Mode) -> None:
    for module, core in adapter.cores.items():
        if module not in bases:
            raise CompressionError(_MISMATCH, f"core module {module!r} has no basis", module=module)
        rank = bases[module].rank
        expected = (rank, rank) if mode is Mode.FULL else (rank,)
        if tuple(core.shape) != expected:
            message = f"core {module!r} has shape {list(core.shape)}, its {mode.value} basis needs {list(expected)}"
            raise CompressionError(_MISMATCH, message, module=module)


def _check_pair(core: CoreFile, bases: BasesFile) -> None:
    if core.basis_id != bases.basis_id:
        message = f"core {core.adapter.name!r} belongs to basis {core.basis_id}, not {bases.basis_id}"
        raise CompressionError(_MISMATCH, message, core_basis_id=core.basis_id, basis_id=bases.basis_id)
    if core.meta != bases.meta:
        raise CompressionError(_MISMATCH, f"core {core.adapter.name!r} and its bases disagree on {core.meta}")
    _check_core_fits(core.adapter, bases.bases, core.meta.mode)


# Per-module core metadata that is optional (null when unknown) and the type each holds.
_CORE_EXTRAS: dict[str, type] = {"source_rank": int, "source_scaling": float, "error": float}


def _optional_number(value: Any, what: str, kind: type) -> Any:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or (kind is int and not isinstance(value, int)):
        raise _bad(f"{what} must be a number, got {value!r}", field=what)
    return kind(value)


def read_core(data: bytes, *, bases: BasesFile | None = None, cluster: int = 0) -> CoreFile:
    """Read and validate a core file. With ``bases``, also check that it belongs to them (``basis_mismatch``).
    ``cluster`` is the index recorded in the returned adapter (a core file does not know it; the manifest does).
    """
    stored, metadata = _load(data, "core")
    meta, tensors = _parse_meta(metadata), _float32(stored)
    name, basis_id = metadata.get("name"), metadata.get("basis_id")
    if not isinstance(name, str) or not name or not isinstance(basis_id, str) or not basis_id:
        raise _bad("core metadata needs a name and a basis_id")
    cores: dict[str, torch.Tensor] = {}
    extras: dict[str, dict[str, Any]] = {key: {} for key in _CORE_EXTRAS}
    for module, info in sorted(_modules_table(metadata, tensors, ("S",)).items()):
        rank = _positive_int(info.get("rank"), f"{module}.rank")
        if info.get("scaling") != 1.0:  # version 1 folds every scaling into S; anything else is not ours
            raise _bad(f"{module}: serve-time scaling must be 1.0, got {info.get('scaling')!r}", module=module)
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
        raise _bad(f"{directory / MANIFEST_NAME} is missing or not valid JSON: {e}") from e
    if not isinstance(manifest, dict):
        raise _bad(f"{MANIFEST_NAME} must hold a JSON object")
    _check_identity({k: v for k, v in manifest.items() if isinstance(v, str)}, "manifest")
    clusters, adapters = manifest.get("clusters"), manifest.get("adapters")
    if not isinstance(clusters, list) or not isinstance(adapters, list):
        raise _bad(f"{MANIFEST_NAME} needs 'clusters' and 'adapters' lists")
    return manifest


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise _bad(f"{path} cannot be read: {e}") from e


def read_compression(directory: Path | str) -> Compression:
    """Read a directory written by :func:`write_compression`, validating every file and every pairing."""
    directory = Path(directory)
    manifest = _manifest(directory)
    loaded: list[BasesFile] = []
    for index, entry in enumerate(manifest["clusters"]):
        # Paths come from the layout, never from the manifest, so a manifest cannot point outside the directory.
        if not isinstance(entry, dict) or entry.get("index") != index:
            raise _bad(f"{MANIFEST_NAME}: cluster entry {index} is malformed")
        bases = read_bases(_read_file(directory / bases_file_name(index)))
        if entry.get("basis_id") != bases.basis_id:
            raise CompressionError(_MISMATCH, f"cluster {index}: the manifest names another basis", cluster=index)
        loaded.append(bases)
    if not loaded:
        raise _bad(f"{MANIFEST_NAME} lists no clusters")
    adapters = []
    for entry in manifest["adapters"]:
        cluster = entry.get("cluster") if isinstance(entry, dict) else None
        if not isinstance(cluster, int) or isinstance(cluster, bool) or not 0 <= cluster < len(loaded):
            raise _bad(f"{MANIFEST_NAME}: adapter entry {entry!r} has no valid cluster")
        try:
            path = directory / core_file_name(str(entry.get("name")))
        except InvalidName as e:
            raise _bad(f"{MANIFEST_NAME}: adapter name {entry.get('name')!r} is not valid") from e
        core = read_core(_read_file(path), bases=loaded[cluster], cluster=cluster)
        if core.adapter.name != entry["name"]:
            raise _bad(f"{path.name} holds adapter {core.adapter.name!r}, the manifest says {entry['name']!r}")
        adapters.append(core.adapter)
    meta = loaded[0].meta
    if any(bases.meta != meta for bases in loaded):
        raise _bad("the clusters' bases disagree on mode, base model or target modules")
    return Compression(meta.mode, meta.base_model, meta.target_modules, [Cluster(b.bases) for b in loaded], adapters)
