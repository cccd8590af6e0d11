"""Reading and validating a PEFT LoRA adapter from any source, into a :class:`LoraAdapter`.

The order is deliberate: gather the two files under the size and archive rules, parse the config, check the
safetensors header (before any tensor is read), check names and shapes against the config, and only then
load the tensors and check their values. Nothing is ever unpickled.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from soppu.adapter.archive import (
    PICKLE_SUFFIXES,
    AdapterFiles,
    collect_archive,
    collect_directory,
    collect_parts,
)
from soppu.adapter.config import AdapterConfig, parse_config, pattern_budget
from soppu.adapter.limits import DEFAULT_LIMITS, Limits
from soppu.adapter.model import LoraAdapter, LoraModule
from soppu.adapter.safetensors_check import TensorSpec, check_safetensors_header
from soppu.errors import AdapterError
from soppu.errors import AdapterErrorCode as Code

__all__ = ["read_adapter", "validate_files"]

_TENSOR_NAME = re.compile(r"base_model\.model\.(?P<module>.+)\.(?P<factor>lora_A|lora_B)\.weight")
# Pickle protocol 2+ opens with 0x80 <protocol>; torch.save writes a zip whose members hold data.pkl.
_PICKLE_PROTOCOLS = {bytes([0x80, p]) for p in range(2, 6)}


def _all_finite(tensor: torch.Tensor) -> bool:
    # NaN and Inf survive a sum, and a float64 sum of fp32/fp16/bf16 values cannot overflow (3.4e38 per element
    # times any tensor that fits in memory stays far below 1.8e308): exact, and ~3x faster than isfinite().all().
    return math.isfinite(float(tensor.sum(dtype=torch.float64)))


def _reject_pickle(weights: bytes) -> None:
    if weights[:2] in _PICKLE_PROTOCOLS or (weights[:4] == b"PK\x03\x04" and b"data.pkl" in weights[:4096]):
        raise AdapterError(Code.PICKLE_REJECTED, "weights are a pickle; only safetensors is accepted")


def _pair_modules(specs: dict[str, TensorSpec], config: AdapterConfig) -> dict[str, tuple[TensorSpec, TensorSpec]]:
    factors: dict[str, dict[str, TensorSpec]] = {}
    for name, spec in specs.items():
        if "lora_magnitude_vector" in name:
            raise AdapterError(Code.UNSUPPORTED_VARIANT, "DoRA magnitude vectors are not supported", tensor=name)
        match = _TENSOR_NAME.fullmatch(name)
        if match is None:
            raise AdapterError(
                Code.UNEXPECTED_TENSOR,
                f"tensor {name!r} is not named base_model.model.<module>.lora_A/lora_B.weight",
                tensor=name,
            )
        module = match["module"]
        if not config.targets(module):
            raise AdapterError(Code.UNEXPECTED_TENSOR, f"module {module!r} is not among target_modules", tensor=name)
        factors.setdefault(module, {})[match["factor"]] = spec
    if not factors:
        raise AdapterError(Code.MISSING_TENSOR, "the adapter holds no LoRA tensors")
    pairs = {}
    for module, found in sorted(factors.items()):
        for factor in ("lora_A", "lora_B"):
            if factor not in found:
                raise AdapterError(Code.MISSING_TENSOR, f"module {module!r} has no {factor} tensor", module=module)
        pairs[module] = (found["lora_A"], found["lora_B"])
    return pairs


def _check_shapes(module: str, a: TensorSpec, b: TensorSpec, config: AdapterConfig) -> None:
    r = config.rank_for(module)
    if len(a.shape) != 2 or len(b.shape) != 2:
        raise AdapterError(Code.SHAPE_MISMATCH, f"module {module!r}: LoRA factors must be 2-D", module=module)
    if a.shape[0] != r or b.shape[1] != r:
        raise AdapterError(
            Code.SHAPE_MISMATCH,
            f"module {module!r}: lora_A {list(a.shape)} and lora_B {list(b.shape)} do not have rank r={r}",
            module=module,
        )
    if 0 in a.shape or 0 in b.shape:
        raise AdapterError(Code.SHAPE_MISMATCH, f"module {module!r}: empty LoRA factor", module=module)


def validate_files(
    files: AdapterFiles, limits: Limits = DEFAULT_LIMITS, *, expected_base_model: str | None = None
) -> LoraAdapter:
    """Validate raw adapter files and return the adapter. Every failure is an AdapterError with its code."""
    if len(files.config) > limits.max_config_bytes or len(files.weights) > limits.max_weights_bytes:
        raise AdapterError(Code.TOO_LARGE, "adapter file exceeds the size limits")
    config = parse_config(files.config)
    if expected_base_model is not None and config.base_model_name_or_path != expected_base_model:
        raise AdapterError(
            Code.BASE_MODEL_MISMATCH,
            f"adapter was trained for {config.base_model_name_or_path!r}, expected {expected_base_model!r}",
            expected=expected_base_model,
            actual=config.base_model_name_or_path,
        )
    _reject_pickle(files.weights)
    specs, _metadata = check_safetensors_header(files.weights, limits)
    with pattern_budget():
        pairs = _pair_modules(specs, config)
        for module, (a_spec, b_spec) in pairs.items():
            _check_shapes(module, a_spec, b_spec, config)
        scalings = {module: config.scaling_for(module) for module in pairs}

    try:
        tensors = load_safetensors(files.weights)
    except SafetensorError as e:  # our header checks should make this unreachable; keep the code stable anyway
        raise AdapterError(Code.BAD_HEADER, f"safetensors could not load the weights: {e}") from e
    modules = {}
    for module, (a_spec, b_spec) in pairs.items():
        a, b = tensors[a_spec.name], tensors[b_spec.name]
        if not (_all_finite(a) and _all_finite(b)):
            raise AdapterError(Code.NON_FINITE, f"module {module!r} has NaN or Inf values", module=module)
        modules[module] = LoraModule(b=b, a=a, scaling=scalings[module])
    return LoraAdapter(config=config, modules=modules)


def read_adapter(
    source: Path | str | bytes | Mapping[str, bytes],
    limits: Limits = DEFAULT_LIMITS,
    *,
    expected_base_model: str | None = None,
) -> LoraAdapter:
    """Read and validate a PEFT LoRA adapter.

    ``source`` is a directory, a .zip / .tar / .tar.gz file (path or bytes), or a mapping of file names to
    bytes (e.g. the parts of a multipart upload). Raises AdapterError with a stable code on any problem.
    """
    if isinstance(source, Mapping):
        files = collect_parts(source, limits)
    elif isinstance(source, bytes | bytearray):
        files = collect_archive(bytes(source), limits)
    else:
        path = Path(source)
        if path.is_dir():
            files = collect_directory(path, limits)
        elif path.is_file():
            if path.name.lower().endswith(PICKLE_SUFFIXES):
                raise AdapterError(Code.PICKLE_REJECTED, f"{path.name} is a pickle and is never opened")
            files = collect_archive(path, limits)
        else:
            raise FileNotFoundError(f"no adapter at {path}")
    return validate_files(files, limits, expected_base_model=expected_base_model)
