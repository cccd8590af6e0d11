"""The error tree of the core library.

Every failure the core reports on purpose is a :class:`SoppuError` carrying a stable, machine-readable
``code`` (services map codes to HTTP 4xx/5xx; clients switch on them) and a human message::

    SoppuError                  base: .code, .message, .detail
    ├── AdapterError            an adapter failed to read or validate (bad input: 4xx)
    ├── StoreError              the object store refused or failed
    │   ├── ObjectNotFound      code "not_found"
    │   ├── ObjectExists        code "already_exists" (a create-only put lost the race)
    │   ├── ObjectChanged       code "object_changed" (a conditional put lost: another writer won)
    │   └── StoreUnavailable    code "store_unavailable" (network, credentials, bucket)
    ├── InvalidName             code "invalid_name": a user id, adapter name or key that is not allowed
    ├── CompressionError        compression could not run (codes listed on the class)
    └── ExamplesError           the example fixture could not be built (codes listed on the class)

Codes never change meaning once released; new failures get new codes. Every code has one HTTP status, in
:data:`STATUS` (a plain table, so the core still knows nothing of web frameworks); every service that answers a
core error over HTTP takes its status from there, and a test keeps every code the core raises in it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

__all__ = [
    "STATUS",
    "AdapterError",
    "AdapterErrorCode",
    "CompressionError",
    "ExamplesError",
    "InvalidName",
    "ObjectChanged",
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


# Every code the core raises, with the HTTP status a service answers it with. Codes raised by classes defined
# elsewhere in the core are here too: ``user_deleted`` (soppu.auth.UserDeleted), ``idempotency_conflict``
# (soppu.registry.versions.IdempotencyConflict), ``cohort_not_found`` (soppu.registry.pipeline).
STATUS: dict[str, int] = {
    # the request is malformed
    **dict.fromkeys(("missing_config", "missing_weights", "bad_header", "bad_archive", "unsafe_archive"), 400),
    **dict.fromkeys(("not_found", "cohort_not_found"), 404),
    # a conflict with what is stored: a create-only put or a conditional put lost, a key reused, a user going
    **dict.fromkeys(("already_exists", "object_changed", "idempotency_conflict", "user_deleted"), 409),
    "too_large": 413,
    # not a kind of file we take
    **dict.fromkeys(("not_safetensors", "pickle_rejected"), 415),
    # well formed, but not an adapter we can serve (LoRAX 0.12.1 could not serve it exactly, for the last two)
    **dict.fromkeys(
        (
            "bad_config",
            "shape_mismatch",
            "missing_tensor",
            "unexpected_tensor",
            "non_finite",
            "unsupported_dtype",
            "unsupported_variant",
            "base_model_mismatch",
            "bad_probes",
            "invalid_name",
            "lorax_rank_limit",
            "lorax_partial_layers",
        ),
        422,
    ),
    # the adapters cannot be compressed as asked (CompressionError), or the example set as asked (ExamplesError)
    **dict.fromkeys(
        (
            "compression_error",
            "incompatible_adapters",
            "bad_rank",
            "bad_compressed_format",
            "basis_mismatch",
            "no_adapters",
            "bad_clusters",
            "unknown_base",
            "too_many_users",
        ),
        422,
    ),
    # a bug, or a broken installation
    **dict.fromkeys(
        ("soppu_error", "examples_error", "missing_base_package", "corrupt_base_file", "missing_shipped_adapters"), 500
    ),
    "store_error": 502,  # the store refused an operation
    "store_unavailable": 503,  # retry later
}
