"""The PEFT LoRA adapter format: reading from any source, validation, the in-memory form, writing back.

``read_adapter`` is the one entry point for untrusted input; every rejection is an
:class:`~soppu.errors.AdapterError` with a stable code (see :class:`~soppu.errors.AdapterErrorCode`).
"""

from soppu.adapter.archive import CONFIG_NAME, WEIGHTS_NAME, AdapterFiles
from soppu.adapter.config import AdapterConfig, parse_config
from soppu.adapter.limits import DEFAULT_LIMITS, Limits
from soppu.adapter.model import LoraAdapter, LoraModule, tensor_key
from soppu.adapter.reader import read_adapter, validate_files
from soppu.adapter.writer import adapter_files, write_adapter

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_LIMITS",
    "WEIGHTS_NAME",
    "AdapterConfig",
    "AdapterFiles",
    "Limits",
    "LoraAdapter",
    "LoraModule",
    "adapter_files",
    "parse_config",
    "read_adapter",
    "tensor_key",
    "validate_files",
    "write_adapter",
]
