"""The error tree of the core library.

Every failure the core reports on purpose is a :class:`SoppuError` carrying a stable, machine-readable
``code`` (services map codes to HTTP 4xx/5xx; clients switch on them) and a human message::

    SoppuError                  base: .code, .message, .detail
    ├── AdapterError            an adapter failed to read or validate (bad input: 4xx)
    ├── StoreError              the object store refused or failed
    │   ├── ObjectNotFound      code "not_found"
    │   ├── ObjectExists        code "already_exists" (a create-only put lost the race)
    │   └── StoreUnavailable    code "store_unavailable" (network, credentials, bucket)
    ├── InvalidName             code "invalid_name": a user id, adapter name or key that is not allowed
    ├── CompressionError        compression could not run (codes listed on the class)
    └── ExamplesError           the example fixture could not be built (codes listed on the class)

Codes never change meaning once released; new failures get new codes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

__all__ = [
    "AdapterError",
    "AdapterErrorCode",
    "CompressionError",
    "ExamplesError",
    "InvalidName",
    "ObjectExists",
    "ObjectNotFound",
    "SoppuError",
    "StoreError",
    "StoreUnavailable",
]


class SoppuError(Exception):
    """Base of every deliberate error in SOPPU: a stable ``code`` plus a message for people."""

    code: str = "soppu_error"

    def __init__(self, message: str, *, code: str | None = None, **detail: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.detail = detail

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form the services put in error bodies."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail:
            body["detail"] = self.detail
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class AdapterErrorCode(StrEnum):
    """Why an adapter was rejected. Each hostile input maps to exactly one of these."""

    NOT_SAFETENSORS = "not_safetensors"  # the weights file is not safetensors at all
    PICKLE_REJECTED = "pickle_rejected"  # a pickle (.bin/.pt/...) was offered; it is never unpickled
    MISSING_CONFIG = "missing_config"  # no adapter_config.json
    MISSING_WEIGHTS = "missing_weights"  # no adapter_model.safetensors
    BAD_CONFIG = "bad_config"  # adapter_config.json is not valid JSON or a field is invalid
    BAD_HEADER = "bad_header"  # the safetensors header is malformed or inconsistent with the file
    SHAPE_MISMATCH = "shape_mismatch"  # tensor shapes disagree with r or with each other
    MISSING_TENSOR = "missing_tensor"  # a lora_A without its lora_B (or vice versa), or no tensors
    UNEXPECTED_TENSOR = "unexpected_tensor"  # a tensor name that is not a LoRA factor of a target module
    NON_FINITE = "non_finite"  # NaN or Inf in a tensor
    UNSUPPORTED_DTYPE = "unsupported_dtype"  # anything but fp32, fp16, bf16
    UNSUPPORTED_VARIANT = "unsupported_variant"  # DoRA, non-LoRA peft_type, bias, modules_to_save, ...
    UNSAFE_ARCHIVE = "unsafe_archive"  # absolute paths, "..", links, ambiguous members
    BAD_ARCHIVE = "bad_archive"  # a corrupt or unreadable .zip / .tar.gz, or an unknown container
    TOO_LARGE = "too_large"  # a file, an archive or its unpacked contents exceed a limit
    BASE_MODEL_MISMATCH = "base_model_mismatch"  # the adapter was trained for another base model
    BAD_PROBES = "bad_probes"  # the upload's probe prompts are not a short JSON list of strings
    LORAX_RANK_LIMIT = "lorax_rank_limit"  # a rank over 128: LoRAX 0.12.1 has no kernel to serve it exactly
    LORAX_PARTIAL_LAYERS = "lorax_partial_layers"  # a layer type on some layers only, and no base model to fill


class AdapterError(SoppuError):
    """An adapter failed to read or validate. ``code`` is an :class:`AdapterErrorCode` value."""

    def __init__(self, code: AdapterErrorCode, message: str, **detail: Any) -> None:
        super().__init__(message, code=code.value, **detail)


class StoreError(SoppuError):
    """The object store refused or failed an operation."""

    code = "store_error"


class ObjectNotFound(StoreError):
    code = "not_found"


class ObjectExists(StoreError):
    code = "already_exists"


class ObjectChanged(StoreError):
    """A conditional put lost: the object is no longer the version its ETag named (another writer won)."""

    code = "object_changed"


class StoreUnavailable(StoreError):
    code = "store_unavailable"


class InvalidName(SoppuError):
    code = "invalid_name"


class CompressionError(SoppuError):
    """Compression could not run on the given input. Codes:

    ``incompatible_adapters`` (different base models or target modules in one group), ``bad_rank`` (a rank,
    error budget or ratio that cannot be met or makes no sense), ``bad_compressed_format`` (a compressed
    artifact that is not ours, or of an unknown format version), ``basis_mismatch`` (a core and a basis that do
    not belong together), ``no_adapters`` (nothing to compress), ``bad_clusters`` (K outside 1..N).
    """

    code = "compression_error"

    def __init__(self, code: str, message: str, **detail: Any) -> None:
        super().__init__(message, code=code, **detail)


class ExamplesError(SoppuError):
    """The example fixture could not be built. Codes:

    ``unknown_base`` (``--base`` names no known base), ``missing_base_package`` (the package that ships the
    base model's weights is not installed), ``corrupt_base_file`` (that file does not match the hash its
    package recorded), ``too_many_users`` (more users than the shipped adapters hold),
    ``missing_shipped_adapters`` (the repository lost them).
    """

    code = "examples_error"

    def __init__(self, code: str, message: str, **detail: Any) -> None:
        super().__init__(message, code=code, **detail)
