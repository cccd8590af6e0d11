"""An uploader's probe prompts: what the user's adapter is for, in the user's words.

An upload may carry them (a ``probes`` form field, or a ``probes.json`` file beside the adapter files: a JSON
list of strings). They are stored with the original and used twice: the quality gate serves a compressed
form only if it gives the same greedy answer as the original on every probe, and the cores are fitted on text
that starts from them. :func:`parse_probes` is the one validation; a refusal is ``bad_probes`` (422).
"""

from __future__ import annotations

import json

from soppu.errors import AdapterError, AdapterErrorCode
from soppu.peft_files import PROBES_NAME

__all__ = ["MAX_PROBES", "MAX_PROBES_BYTES", "MAX_PROBE_CHARS", "PROBES_NAME", "encode_probes", "parse_probes"]

MAX_PROBES = 32  # each probe costs the gate a greedy generation per check
MAX_PROBE_CHARS = 1000
MAX_PROBES_BYTES = 64 * 1024  # bounds the field or file before it is parsed


def _bad(message: str, **detail: object) -> AdapterError:
    return AdapterError(AdapterErrorCode.BAD_PROBES, message, **detail)


def parse_probes(data: bytes | str) -> tuple[str, ...]:
    """The probes in ``data`` (a JSON list of 1..MAX_PROBES non-blank strings of at most MAX_PROBE_CHARS)."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_PROBES_BYTES:
        raise _bad(f"probes are {len(raw)} bytes; the limit is {MAX_PROBES_BYTES}", limit=MAX_PROBES_BYTES)
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(f"probes must be a JSON list of strings: {e}") from e
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise _bad(f"probes must be a JSON list of strings, got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_PROBES:
        raise _bad(f"send 1 to {MAX_PROBES} probes, got {len(value)}", limit=MAX_PROBES)
    for index, probe in enumerate(value):
        if not probe.strip():
            raise _bad(f"probe {index} is blank", index=index)
        if len(probe) > MAX_PROBE_CHARS:
            raise _bad(f"probe {index} has {len(probe)} characters; the limit is {MAX_PROBE_CHARS}", index=index)
    return tuple(value)


def encode_probes(probes: tuple[str, ...] | list[str]) -> bytes:
    """The stored form: compact JSON, so the same probes always give the same bytes (and digest)."""
    return json.dumps(list(probes), ensure_ascii=False, separators=(",", ":")).encode()
