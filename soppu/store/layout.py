"""The bucket layout: every key SOPPU writes, defined here and nowhere else.

===========================================================  =====================================================
key                                                          what
===========================================================  =====================================================
``originals/{user}/{adapter}/{version}/adapter_config.json``  the adapter as uploaded (validated); refits start here
``originals/{user}/{adapter}/{version}/adapter_model.safetensors``
``exports/{user}/{adapter}/{version}/adapter_config.json``    PEFT LoRA that LoRAX loads: ``adapter_source=s3``,
``exports/{user}/{adapter}/{version}/adapter_model.safetensors``  ``adapter_id=s3://{bucket}/exports/{user}/{adapter}/{version}``
``cores/{user}/{adapter}/{version}/core.safetensors``          the per-adapter core of the compressed form
``bases/{cohort}/{basis}/bases.safetensors``                   a cohort's shared bases (U, V per module)
``manifests/{user}/{adapter}/{version}.json``                  what one version is made of (keys, basis, report)
``pointers/{user}/{adapter}/current.json``                     the current version; written last, so it switches
``jobs/{user}/{adapter}/{version}.json``                       the compression job of one upload (state, report)
``idempotency/{user}/{adapter}/{digest}.json``                 an upload's Idempotency-Key -> its job
``cohorts/{cohort}/state.json``                                a cohort's members, current basis, refit flag
``tombstones/{user_digest}.json``                              what deletions leave: last versions, deletion state
``leases/{name_digest}.json``                                  who holds a lock across replicas, until when
``keys/{key_id}.json``                                         an API key record (role, user, SHA-256 of the secret)
``key-index/{user}/{key_id}``                                  a user's keys, so deleting the user revokes them
===========================================================  =====================================================

``{version}`` and ``{basis}`` are ``v`` plus 8 digits (``v00000001``). Two rules hold for every key LoRAX reads
(everything under ``exports/``), because LoRAX downloads *every* object under the prefix it is given and
caches by key forever (see ``lorax/README.md``):

1. **No adapter prefix is a prefix of another.** User ids and adapter names cannot contain ``/`` and the final
   component has a fixed length, so ``exports/u1/default/v00000001`` never matches ``.../v000000010`` or
   ``exports/u10/...``; only the two PEFT files live under it.
2. **Nothing is overwritten, and no key is reused.** A new version gets a new key; exports, cores, originals
   and bases are written with create-only puts. Only ``current.json`` is replaced, and LoRAX never reads it.
   Deleting an adapter or a user leaves its last version number in ``tombstones/`` and a retired cohort keeps
   its ``state.json``, so version and basis numbers carry on past a deletion instead of starting again.

Data is grouped by kind first so that one read-only policy on ``exports/`` is all LoRAX needs; deleting a user
therefore walks :func:`user_prefixes`.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass

from soppu.errors import InvalidName
from soppu.peft_files import CONFIG_NAME, PROBES_NAME, WEIGHTS_NAME

__all__ = [
    "LAYOUT",
    "NAME_PATTERN",
    "AdapterVersion",
    "adapter_jobs_prefix",
    "adapter_prefixes",
    "adapters_prefix",
    "basis_key",
    "check_name",
    "cohort_state_key",
    "cohorts_prefix",
    "format_version",
    "idempotency_key",
    "jobs_prefix",
    "key_index_key",
    "key_index_prefix",
    "key_record_key",
    "lease_key",
    "manifests_prefix",
    "name_digest",
    "parse_cohort_state_key",
    "parse_key_index_key",
    "parse_original_key",
    "parse_pointer_key",
    "parse_version",
    "pointer_key",
    "pointers_prefix",
    "relative_ref",
    "s3_adapter_id",
    "tombstone_key",
    "user_prefixes",
    "versions_prefix",
]

ORIGINALS = "originals"
EXPORTS = "exports"
CORES = "cores"
BASES = "bases"
MANIFESTS = "manifests"
POINTERS = "pointers"
CORE_NAME = "core.safetensors"
BASES_NAME = "bases.safetensors"
POINTER_NAME = "current.json"
COHORT_STATE_NAME = "state.json"
JOBS = "jobs"
IDEMPOTENCY = "idempotency"
COHORTS = "cohorts"
TOMBSTONES = "tombstones"
LEASES = "leases"
KEYS = "keys"
KEY_INDEX = "key-index"

# Every key template, for documentation and the test that keeps the README in step with this module.
LAYOUT: tuple[str, ...] = (
    f"{ORIGINALS}/{{user}}/{{adapter}}/{{version}}/{CONFIG_NAME}",
    f"{ORIGINALS}/{{user}}/{{adapter}}/{{version}}/{WEIGHTS_NAME}",
    f"{EXPORTS}/{{user}}/{{adapter}}/{{version}}/{CONFIG_NAME}",
    f"{EXPORTS}/{{user}}/{{adapter}}/{{version}}/{WEIGHTS_NAME}",
    f"{CORES}/{{user}}/{{adapter}}/{{version}}/{CORE_NAME}",
    f"{BASES}/{{cohort}}/{{basis}}/{BASES_NAME}",
    f"{MANIFESTS}/{{user}}/{{adapter}}/{{version}}.json",
    f"{POINTERS}/{{user}}/{{adapter}}/{POINTER_NAME}",
    f"{JOBS}/{{user}}/{{adapter}}/{{version}}.json",
    f"{IDEMPOTENCY}/{{user}}/{{adapter}}/{{digest}}.json",
    f"{COHORTS}/{{cohort}}/{COHORT_STATE_NAME}",
    f"{TOMBSTONES}/{{user_digest}}.json",
    f"{LEASES}/{{name_digest}}.json",
    f"{KEYS}/{{key_id}}.json",
    f"{KEY_INDEX}/{{user}}/{{key_id}}",
)

# User ids, adapter names and cohort names: a letter or digit first (so never "." or ".."), then a small
# alphabet that needs no escaping in a key, a URL or a shell.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(r"v(\d{8})")
MAX_VERSION = 99_999_999


def check_name(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a valid user id / adapter name / cohort name, else raise InvalidName."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidName(
            f"invalid {what} {value!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit",
            field=what,
        )
    return value


def format_version(number: int) -> str:
    if not isinstance(number, int) or not 1 <= number <= MAX_VERSION:
        raise InvalidName(f"version must be an integer in [1, {MAX_VERSION}], got {number!r}", field="version")
    return f"v{number:08d}"


def parse_version(text: str) -> int:
    match = _VERSION.fullmatch(text)
    if match is None or int(match[1]) == 0:
        raise InvalidName(f"invalid version {text!r}: expected v00000001 .. v{MAX_VERSION}", field="version")
    return int(match[1])


def _under(kind: str, *names: str) -> str:
    """``kind/name/.../``: the prefix of every key of one kind under those names (with the trailing slash, so
    ``u1`` never matches ``u10``). Every per-adapter key is built on it; callers check the names."""
    return "".join(f"{part}/" for part in (kind, *names))


def _parts(key: str, kind: str, count: int) -> list[str] | None:
    """The ``count`` components of ``key`` after ``kind/``, or None if ``key`` is not of that kind and shape."""
    head, _, rest = key.partition("/")
    parts = rest.split("/")
    return parts if head == kind and len(parts) == count else None


def _valid_names(*names: str) -> bool:
    return all(_NAME.fullmatch(name) for name in names)


@dataclass(frozen=True, slots=True)
class AdapterVersion:
    """One version of one user's adapter, and every key that belongs to it."""

    user_id: str
    adapter: str
    version: int

    def __post_init__(self) -> None:
        check_name(self.user_id, "user_id")
        check_name(self.adapter, "adapter name")
        format_version(self.version)

    def _path(self, kind: str) -> str:
        return f"{_under(kind, self.user_id, self.adapter)}{format_version(self.version)}"

    @property
    def original_prefix(self) -> str:
        return self._path(ORIGINALS)

    @property
    def export_prefix(self) -> str:
        """The prefix LoRAX is given (no trailing slash: LoRAX appends the file names itself)."""
        return self._path(EXPORTS)

    @property
    def core_key(self) -> str:
        return f"{self._path(CORES)}/{CORE_NAME}"

    @property
    def manifest_key(self) -> str:
        return f"{self._path(MANIFESTS)}.json"

    @property
    def pointer_key(self) -> str:
        return pointer_key(self.user_id, self.adapter)

    @property
    def job_key(self) -> str:
        return f"{self._path(JOBS)}.json"

    @property
    def job_id(self) -> str:
        """The public id of this version's job: ``user~adapter~v00000001`` (``~`` is in no name)."""
        return f"{self.user_id}~{self.adapter}~{format_version(self.version)}"

    @property
    def core_prefix(self) -> str:
        """The prefix our engine is given for the compressed form (``adapter_source=s3``)."""
        return self._path(CORES)

    @classmethod
    def from_job_id(cls, job_id: str) -> AdapterVersion:
        parts = job_id.split("~")
        if len(parts) != 3:
            raise InvalidName(f"invalid job id {job_id!r}", field="job_id")
        return cls(parts[0], parts[1], parse_version(parts[2]))

    def original_keys(self) -> tuple[str, str]:
        """(config key, weights key) of the original upload."""
        return f"{self.original_prefix}/{CONFIG_NAME}", f"{self.original_prefix}/{WEIGHTS_NAME}"

    @property
    def probes_key(self) -> str:
        """The uploader's probe prompts, when the upload carried any."""
        return f"{self.original_prefix}/{PROBES_NAME}"

    def export_keys(self) -> tuple[str, str]:
        """(config key, weights key) of the LoRAX-loadable PEFT export."""
        return f"{self.export_prefix}/{CONFIG_NAME}", f"{self.export_prefix}/{WEIGHTS_NAME}"


def s3_adapter_id(bucket: str, prefix: str) -> str:
    """What a request to LoRAX (an export) or the engine (an export or a core) carries as ``adapter_id``, with
    ``adapter_source="s3"``, for the files under ``prefix`` in ``bucket``."""
    return f"s3://{bucket}/{prefix}"


_ORIGINAL_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME, PROBES_NAME})


def adapters_prefix(user_id: str) -> str:
    """Where every adapter of ``user_id`` has its originals: listing it names them all (:func:`parse_original_key`)."""
    return _under(ORIGINALS, check_name(user_id, "user_id"))


def versions_prefix(user_id: str, adapter: str) -> str:
    """Where every version of one adapter has its original, from the first claim on (see soppu.registry.versions)."""
    return _under(ORIGINALS, check_name(user_id, "user_id"), check_name(adapter, "adapter name"))


def parse_original_key(key: str) -> AdapterVersion | None:
    """The version an ``originals/`` key belongs to; None for a key of another kind or shape."""
    parts = _parts(key, ORIGINALS, 4)
    if parts is None or not _valid_names(*parts[:2]) or parts[3] not in _ORIGINAL_FILES:
        return None
    match = _VERSION.fullmatch(parts[2])
    if match is None or int(match[1]) == 0:
        return None
    return AdapterVersion(parts[0], parts[1], int(match[1]))


def manifests_prefix(user_id: str, adapter: str) -> str:
    """Where the manifest of every version of one adapter lives."""
    return _under(MANIFESTS, check_name(user_id, "user_id"), check_name(adapter, "adapter name"))


def jobs_prefix() -> str:
    """Where every job record lives."""
    return _under(JOBS)


def adapter_jobs_prefix(user_id: str, adapter: str) -> str:
    """Where the job record of every version of one adapter lives."""
    return _under(JOBS, check_name(user_id, "user_id"), check_name(adapter, "adapter name"))


def pointer_key(user_id: str, adapter: str) -> str:
    return f"{_under(POINTERS, check_name(user_id, 'user_id'), check_name(adapter, 'adapter name'))}{POINTER_NAME}"


def pointers_prefix(user_id: str) -> str:
    """Where the pointer of every published adapter of ``user_id`` lives (:func:`parse_pointer_key`)."""
    return _under(POINTERS, check_name(user_id, "user_id"))


def parse_pointer_key(key: str) -> tuple[str, str] | None:
    """(user id, adapter name) of a :func:`pointer_key`; None for a key of another kind or shape."""
    parts = _parts(key, POINTERS, 3)
    if parts is None or not _valid_names(*parts[:2]) or parts[2] != POINTER_NAME:
        return None
    return parts[0], parts[1]


def basis_key(cohort: str, basis_version: int) -> str:
    return f"{BASES}/{check_name(cohort, 'cohort')}/{format_version(basis_version)}/{BASES_NAME}"


def relative_ref(from_key: str, to_key: str) -> str:
    """``to_key`` as a path relative to ``from_key``'s folder: how a core names its bases (``../../..``), so
    the reference survives a copy of the whole bucket under another name."""
    return posixpath.relpath(to_key, posixpath.dirname(from_key))


def adapter_prefixes(user_id: str, adapter: str) -> tuple[str, ...]:
    """Every prefix that holds data of one adapter of ``user_id`` (each ends in ``/``)."""
    check_name(user_id, "user_id")
    check_name(adapter, "adapter name")
    kinds = (ORIGINALS, EXPORTS, CORES, MANIFESTS, POINTERS, JOBS, IDEMPOTENCY)
    return tuple(_under(kind, user_id, adapter) for kind in kinds)


def user_prefixes(user_id: str) -> tuple[str, ...]:
    """Every prefix that holds data of ``user_id`` (with the trailing slash, so ``u1`` never matches ``u10``).
    Key records live outside them (``keys/``) and are removed through the user's ``key-index/`` entries."""
    check_name(user_id, "user_id")
    kinds = (ORIGINALS, EXPORTS, CORES, MANIFESTS, POINTERS, JOBS, IDEMPOTENCY, KEY_INDEX)
    return tuple(_under(kind, user_id) for kind in kinds)


def idempotency_key(user_id: str, adapter: str, idempotency: str) -> str:
    """Scoped to one adapter: the same key sent for two adapter names is two uploads."""
    digest = hashlib.sha256(idempotency.encode()).hexdigest()[:32]
    return f"{_under(IDEMPOTENCY, check_name(user_id, 'user_id'), check_name(adapter, 'adapter name'))}{digest}.json"


def name_digest(name: str) -> str:
    """A name as it may survive its owner's deletion: a SHA-256 prefix, so no record left behind names them."""
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def tombstone_key(user_id: str) -> str:
    """Outside :func:`user_prefixes`: deleting the user leaves it behind, named by a digest."""
    return f"{TOMBSTONES}/{name_digest(check_name(user_id, 'user_id'))}.json"


def lease_key(name: str) -> str:
    """A lock's lease, named by a digest of the lock's name (which may name a user): see soppu.registry.leases."""
    return f"{LEASES}/{name_digest(name)}.json"


def cohort_state_key(cohort: str) -> str:
    return f"{_under(COHORTS, check_name(cohort, 'cohort'))}{COHORT_STATE_NAME}"


def cohorts_prefix() -> str:
    """Where every cohort's state lives (:func:`parse_cohort_state_key`)."""
    return _under(COHORTS)


def parse_cohort_state_key(key: str) -> str | None:
    """The cohort a :func:`cohort_state_key` names; None for a key of another kind or shape."""
    parts = _parts(key, COHORTS, 2)
    if parts is None or not _valid_names(parts[0]) or parts[1] != COHORT_STATE_NAME:
        return None
    return parts[0]


def key_record_key(key_id: str) -> str:
    return f"{KEYS}/{check_name(key_id, 'key id')}.json"


def key_index_prefix(user_id: str) -> str:
    return _under(KEY_INDEX, check_name(user_id, "user_id"))


def key_index_key(user_id: str, key_id: str) -> str:
    return f"{key_index_prefix(user_id)}{check_name(key_id, 'key id')}"


def parse_key_index_key(key: str) -> tuple[str, str] | None:
    """(user id, key id) of a :func:`key_index_key`; None for a key of another kind or shape."""
    parts = _parts(key, KEY_INDEX, 2)
    return (parts[0], parts[1]) if parts is not None and _valid_names(*parts) else None
