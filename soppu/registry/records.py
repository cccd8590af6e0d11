"""The JSON records the registry keeps in the bucket: jobs, version manifests, current-version pointers, cohort
states and idempotency entries. Shapes only (dataclasses to and from JSON); the keys are in
:mod:`soppu.store.layout`.

A **manifest** says how one version is served:

- ``served_from = "compressed"``: ``core_prefix`` (our engine's ``adapter_id``, the core names its bases) and
  ``export_prefix`` (LoRAX's: the PEFT export ``U S``, ``V^T`` of the compressed form);
- ``served_from = "original"``: the quality gate failed (or the cohort awaits a refit); ``export_prefix`` holds
  the original adapter as uploaded and ``core_prefix`` is null.

The **pointer** ``pointers/{user}/{adapter}/current.json`` names the current version and its manifest; the
gateway resolves a user's adapter by reading it (ETag-revalidated) and then the manifest.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
from enum import StrEnum
from typing import Any, Self

from soppu.registry.results import ServedFrom, VersionReport, known_fields
from soppu.store.layout import name_digest

__all__ = ["CohortState", "IdempotencyRecord", "JobRecord", "JobState", "Manifest", "Pointer", "ServedFrom", "now"]


STORE_ERROR_CODES = frozenset({"store_unavailable", "store_error"})


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def _stored(value: Any) -> Any:
    return value.to_dict() if isinstance(value, VersionReport) else copy.deepcopy(value)


class _Record:
    """JSON round trip for the dataclasses below; unknown fields are ignored so old readers survive new fields.
    A :class:`VersionReport` field is stored as its ``to_dict`` and read back with ``from_dict``."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _stored(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Self:
        return cls(**cls._decode(known_fields(cls, json.loads(data))))

    @classmethod
    def _decode(cls, fields: dict[str, Any]) -> dict[str, Any]:
        """The stored fields as the constructor takes them."""
        return fields


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclasses.dataclass
class JobRecord(_Record):
    job_id: str
    user_id: str
    adapter: str
    version: int
    state: str = JobState.QUEUED.value
    kind: str = "upload"  # "upload" (a user's new version) or "refit" (re-projection onto a refitted basis)
    body_sha256: str | None = None
    created_at: str = dataclasses.field(default_factory=now)
    updated_at: str = dataclasses.field(default_factory=now)
    attempts: int = 0
    error: dict[str, Any] | None = None  # {"code", "message"} when failed
    report: VersionReport | None = None  # when done

    @classmethod
    def _decode(cls, fields: dict[str, Any]) -> dict[str, Any]:
        report = fields.get("report")
        return fields if report is None else {**fields, "report": VersionReport.from_dict(report)}

    @property
    def failed_by_store(self) -> bool:
        """Failed because the store failed (as earlier releases recorded it): such a job is run again."""
        return self.state == JobState.FAILED and (self.error or {}).get("code") in STORE_ERROR_CODES


@dataclasses.dataclass
class Manifest(_Record):
    user_id: str
    adapter: str
    version: int
    served_from: str
    export_prefix: str  # LoRAX: adapter_id = s3://{bucket}/{export_prefix}
    core_prefix: str | None  # our engine: adapter_id = s3://{bucket}/{core_prefix}
    cohort: str | None
    basis_key: str | None
    base_model: str | None
    # The version's VersionReport.to_dict(), kept as stored: hand-made manifests (gateway fixtures, drills) carry {}.
    report: dict[str, Any]
    created_at: str = dataclasses.field(default_factory=now)


@dataclasses.dataclass
class Pointer(_Record):
    version: int
    manifest_key: str
    updated_at: str = dataclasses.field(default_factory=now)


def member_key(user_id: str, adapter: str) -> str:
    """A cohort member's key in :class:`CohortState`: ``user/adapter``."""
    return f"{user_id}/{adapter}"


def split_member(key: str) -> tuple[str, str]:
    """(user id, adapter name) of a :func:`member_key`."""
    user, adapter = key.split("/")
    return user, adapter


@dataclasses.dataclass
class CohortState(_Record):
    cohort: str
    base_model: str | None
    basis_version: int = 0  # 0: no basis yet
    basis_key: str | None = None
    members: dict[str, int] = dataclasses.field(default_factory=dict)  # "user/adapter" -> version it serves
    contributors: list[str] = dataclasses.field(default_factory=list)  # "user/adapter" whose data fitted the basis
    needs_refit: bool = False
    pending: list[str] = dataclasses.field(default_factory=list)  # members served from originals until a refit
    # A replaced basis that a member's current version still uses (its newer upload was not yet published when
    # the refit ran) -> those members; it is deleted once none of them uses it.
    stale_bases: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    updated_at: str = dataclasses.field(default_factory=now)


@dataclasses.dataclass
class Tombstone(_Record):
    """What deletions leave of a user (``tombstones/{user_digest}.json``, never deleted itself): the last version
    number of every deleted adapter, so no version id (and no ``exports/`` key LoRAX caches forever) is ever
    reused, and whether a deletion of the whole user is under way, which uploads and key issues must not pass.
    Adapter names appear only as digests: nothing left behind names the user or their adapters."""

    last_versions: dict[str, int] = dataclasses.field(default_factory=dict)  # name_digest(adapter) -> version
    deleting: bool = False
    deleted_at: str | None = None  # the last completed deletion of the whole user
    updated_at: str = dataclasses.field(default_factory=now)

    def last_version(self, adapter: str) -> int:
        return self.last_versions.get(name_digest(adapter), 0)

    def remember(self, adapter: str, version: int) -> None:
        self.last_versions[name_digest(adapter)] = max(self.last_version(adapter), version)


@dataclasses.dataclass
class IdempotencyRecord(_Record):
    job_id: str
    body_sha256: str
    created_at: str = dataclasses.field(default_factory=now)
