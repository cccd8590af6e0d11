"""What adapter bytes mean: a plain PEFT LoRA, or a SOPPU compressed adapter (a core plus its cohort's bases).

Each format turns validated files into tensors ready for :mod:`inference_service.engine.layers`, on the
model's device and dtype, after checking every module against the model it will run in. Where the bytes
come from is :mod:`inference_service.engine.sources`' business; the formats are picked from a dict by which
files a location holds.

Every ``where`` these functions take is a label for the part being read ("core", "bases"), and it ends up in
the client's error message: callers never pass a storage path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from soppu.adapter import DEFAULT_LIMITS, Limits, read_adapter
from soppu.adapter.archive import CONFIG_NAME, WEIGHTS_NAME
from soppu.compression.format import CoreFile, read_bases, read_core
from soppu.compression.model import Mode
from soppu.errors import SoppuError
from soppu.store.layout import CORE_NAME

from .types import AdapterLoadFailed

__all__ = [
    "MAX_LORA_RANK",
    "LoadedBasis",
    "LoadedCore",
    "LoadedLora",
    "ModelShapes",
    "detect_format",
    "load_basis",
    "load_core",
    "load_lora",
]

MAX_LORA_RANK = 128  # what LoRAX accepts; higher ranks are refused rather than served slowly


@dataclass(frozen=True)
class ModelShapes:
    """The adaptable modules of the served model: path -> (d_out, d_in), and where tensors must live."""

    modules: Mapping[str, tuple[int, int]]
    device: torch.device
    dtype: torch.dtype

    def check(self, module: str, shape: tuple[int, int], where: str) -> None:
        if module not in self.modules:
            raise AdapterLoadFailed(f"{where}: module {module!r} is not an adaptable linear layer of this model")
        if tuple(shape) != tuple(self.modules[module]):
            raise AdapterLoadFailed(
                f"{where}: module {module!r} has shape {list(shape)}, the model's is {list(self.modules[module])}"
            )


@dataclass(frozen=True)
class LoadedLora:
    """A plain LoRA: per module ``A`` (r x d_in) and ``B`` (d_out x r) with the scaling folded into ``B``."""

    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]
    nbytes: int

    @property
    def max_rank(self) -> int:
        return max(a.shape[0] for a, _ in self.modules.values())


@dataclass(frozen=True)
class LoadedBasis:
    """A cohort's shared bases: per module ``U`` (d_out x R) and ``V`` (d_in x R). Loaded once per cohort."""

    basis_id: str
    mode: Mode
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]
    nbytes: int


@dataclass(frozen=True)
class LoadedCore:
    """One user's compressed adapter: per module the R x R core (or its diagonal), on a shared basis."""

    basis: LoadedBasis
    cores: dict[str, torch.Tensor]
    nbytes: int  # the core's own bytes; the basis is shared and counted once, under its own cache entry


Loaded = LoadedLora | LoadedCore

# A location holding these files is in that format (checked in this order).
FORMATS: dict[str, tuple[str, ...]] = {"peft": (CONFIG_NAME, WEIGHTS_NAME), "soppu-core": (CORE_NAME,)}


def detect_format(names: set[str], where: str) -> str:
    for kind, needed in FORMATS.items():
        if all(name in names for name in needed):
            return kind
    raise AdapterLoadFailed(
        f"no adapter at {where}: expected {CONFIG_NAME} + {WEIGHTS_NAME} (PEFT LoRA) or {CORE_NAME} (SOPPU core)"
    )


def _nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def load_lora(
    files: Mapping[str, bytes], shapes: ModelShapes, where: str, limits: Limits = DEFAULT_LIMITS
) -> LoadedLora:
    """A PEFT LoRA from its two files, validated by the core library (safetensors only, never a pickle)."""
    try:
        adapter = read_adapter({CONFIG_NAME: files[CONFIG_NAME], WEIGHTS_NAME: files[WEIGHTS_NAME]}, limits=limits)
    except SoppuError as e:
        raise AdapterLoadFailed(f"{where}: invalid adapter [{e.code}]: {e.message}") from e
    modules = {}
    for name, module in adapter:
        shapes.check(name, module.shape, where)
        if module.rank > MAX_LORA_RANK:
            raise AdapterLoadFailed(f"{where}: module {name!r} has rank {module.rank}, above {MAX_LORA_RANK}")
        # Fold the scaling into B in float32, then cast once: serving never multiplies by it again.
        a = module.a.to(torch.float32)
        b = module.b.to(torch.float32) * module.scaling
        modules[name] = (a.to(shapes.device, shapes.dtype), b.to(shapes.device, shapes.dtype))
    return LoadedLora(modules, _nbytes([t for pair in modules.values() for t in pair]))


def load_basis(data: bytes, shapes: ModelShapes, where: str) -> LoadedBasis:
    try:
        bases = read_bases(data)
    except SoppuError as e:
        raise AdapterLoadFailed(f"{where}: invalid bases file [{e.code}]: {e.message}") from e
    modules = {}
    for name, basis in bases.bases.items():
        shapes.check(name, basis.shape, where)
        modules[name] = (basis.u.to(shapes.device, shapes.dtype), basis.v.to(shapes.device, shapes.dtype))
    nbytes = _nbytes([t for pair in modules.values() for t in pair])
    return LoadedBasis(bases.basis_id, bases.meta.mode, modules, nbytes)


def parse_core(data: bytes, where: str) -> CoreFile:
    """A validated core file; its ``basis_id`` and ``bases_ref`` say which bases to find (and share)."""
    try:
        return read_core(data)
    except SoppuError as e:
        raise AdapterLoadFailed(f"{where}: invalid core file [{e.code}]: {e.message}") from e


def load_core(data: bytes | CoreFile, basis: LoadedBasis, shapes: ModelShapes, where: str) -> LoadedCore:
    """The core (raw bytes, or already parsed by :func:`parse_core`) on ``basis``, checked to pair with it."""
    core = parse_core(data, where) if isinstance(data, bytes) else data
    if core.basis_id != basis.basis_id or core.meta.mode is not basis.mode:
        raise AdapterLoadFailed(f"{where}: the core belongs to basis {core.basis_id}, not {basis.basis_id}")
    cores = {}
    for name, tensor in core.adapter.cores.items():
        if name not in basis.modules:
            raise AdapterLoadFailed(f"{where}: core module {name!r} has no basis")
        rank = basis.modules[name][0].shape[1]
        expected = (rank,) if basis.mode is Mode.DIAG else (rank, rank)
        if tuple(tensor.shape) != expected:
            raise AdapterLoadFailed(f"{where}: core {name!r} has shape {list(tensor.shape)}, expected {expected}")
        cores[name] = tensor.to(shapes.device, shapes.dtype)
    return LoadedCore(basis, cores, _nbytes(list(cores.values())))
