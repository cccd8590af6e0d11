"""Size limits applied while an adapter is read, before anything is unpacked or parsed."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "Limits"]

_MiB = 1024 * 1024
_GiB = 1024 * _MiB


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds on what an adapter read may consume. Services build one from their settings.

    The defaults admit rank-128 adapters on every projection of an 8B model in fp32 (about 1.3 GB) and
    nothing much larger.
    """

    max_weights_bytes: int = 2 * _GiB  # adapter_model.safetensors
    max_config_bytes: int = 256 * 1024  # adapter_config.json
    max_header_bytes: int = 16 * _MiB  # the JSON header inside the safetensors file
    max_archive_bytes: int = 2 * _GiB  # a .zip / .tar.gz as uploaded
    max_unpacked_bytes: int = 2 * _GiB + 256 * 1024  # everything an archive unpacks to
    max_archive_members: int = 64
    max_tensors: int = 8192


DEFAULT_LIMITS = Limits()
