"""Accepting an upload: a new version number, the original stored durably, a queued job, and the
Idempotency-Key record, all before the service acknowledges anything.

Version numbers are claimed with a create-only put of the version's original config, so two concurrent
uploads (even through two service processes) can never get the same number; the later claim gets the higher
number, and since the pointer only moves forward, the current version is the later acknowledged upload.
Numbering starts past the last version a deleted adapter of the same name had (its tombstone), so an id is
never given to other bytes.
"""

from __future__ import annotations

import contextlib
import hashlib

from soppu.adapter import CONFIG_NAME, WEIGHTS_NAME
from soppu.errors import ObjectExists, ObjectNotFound, SoppuError, StoreError
from soppu.peft_files import PROBES_NAME
from soppu.registry.records import IdempotencyRecord, JobRecord, Tombstone
from soppu.store.base import ObjectStore
from soppu.store.layout import AdapterVersion, idempotency_key, parse_original_key, tombstone_key, versions_prefix

__all__ = [
    "IdempotencyConflict",
    "accept_upload",
    "allocate_version",
    "body_digest",
    "latest_version",
    "read_tombstone",
    "withdraw_upload",
]

_MAX_CLAIMS = 100


class IdempotencyConflict(SoppuError):
    code = "idempotency_conflict"


def body_digest(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        digest.update(hashlib.sha256(files[name]).digest())
    if PROBES_NAME in files:  # without probes, the digest is what it always was
        digest.update(hashlib.sha256(files[PROBES_NAME]).digest())
    return digest.hexdigest()


def latest_version(store: ObjectStore, user_id: str, adapter: str, *, below: int | None = None) -> int:
    """The highest version claimed for the adapter (below ``below``, if given); 0 if none."""
    parsed = (parse_original_key(info.key) for info in store.list(versions_prefix(user_id, adapter)))
    versions = [ref.version for ref in parsed if ref is not None and ref.adapter == adapter]
    return max((v for v in versions if below is None or v < below), default=0)


def read_tombstone(store: ObjectStore, user_id: str) -> Tombstone:
    """The user's tombstone; an empty one when nothing of theirs was ever deleted."""
    try:
        return Tombstone.from_json(store.get(tombstone_key(user_id)).data)
    except ObjectNotFound:
        return Tombstone()


def allocate_version(
    store: ObjectStore, user_id: str, adapter: str, files: dict[str, bytes], *, kind: str = "upload"
) -> AdapterVersion:
    """Claim the next version, store the original (with its probes, if ``files`` has them) under it and write
    its queued job record."""
    deleted = read_tombstone(store, user_id).last_version(adapter)
    number = max(latest_version(store, user_id, adapter), deleted) + 1
    for _ in range(_MAX_CLAIMS):
        version = AdapterVersion(user_id, adapter, number)
        config_key, weights_key = version.original_keys()
        try:
            store.put(config_key, files[CONFIG_NAME], create_only=True)
        except ObjectExists:
            number += 1  # another upload claimed it first
            continue
        try:
            store.put(weights_key, files[WEIGHTS_NAME], create_only=True)
            if PROBES_NAME in files:
                store.put(version.probes_key, files[PROBES_NAME], create_only=True)
            job = JobRecord(version.job_id, user_id, adapter, number, kind=kind, body_sha256=body_digest(files))
            store.put(version.job_key, job.to_json(), create_only=True)
        except StoreError:
            # Nothing half-stored is left to be mistaken for a version.
            _forget(store, config_key, weights_key, version.probes_key)
            raise
        return version
    raise StoreError(f"could not claim a version for {user_id}/{adapter} after {_MAX_CLAIMS} tries")


def _forget(store: ObjectStore, *keys: str) -> None:
    # If the store is failing, an orphan is harmless (no job, no pointer) and a later claim skips its number.
    for key in keys:
        with contextlib.suppress(StoreError):
            store.delete(key)


def accept_upload(
    store: ObjectStore, user_id: str, adapter: str, files: dict[str, bytes], idempotency: str | None = None
) -> tuple[JobRecord, bool]:
    """Store a validated upload and queue its job: (the job, whether it is new). With an Idempotency-Key, the
    same body returns the first upload's job (not new), and a different body raises IdempotencyConflict."""
    digest = body_digest(files)
    record_key = idempotency_key(user_id, adapter, idempotency) if idempotency else None
    if record_key is not None:
        existing = _existing(store, record_key, digest)
        if existing is not None:
            return existing, False
    version = allocate_version(store, user_id, adapter, files)
    job = JobRecord.from_json(store.get(version.job_key).data)
    if record_key is not None:
        try:
            store.put(record_key, IdempotencyRecord(job.job_id, digest).to_json(), create_only=True)
        except ObjectExists:
            # A concurrent request with the same key won the race: its job is the answer; ours is withdrawn.
            winner = _existing(store, record_key, digest)
            if winner is not None and winner.job_id != job.job_id:
                withdraw_upload(store, version)
                return winner, False
    return job, True


def withdraw_upload(store: ObjectStore, version: AdapterVersion, idempotency: str | None = None) -> None:
    """Delete what :func:`accept_upload` stored for an upload that must not stand (before it was acknowledged)."""
    keys = [*version.original_keys(), version.probes_key, version.job_key]
    if idempotency is not None:
        keys.append(idempotency_key(version.user_id, version.adapter, idempotency))
    for key in keys:
        store.delete(key)


def _existing(store: ObjectStore, record_key: str, digest: str) -> JobRecord | None:
    try:
        record = IdempotencyRecord.from_json(store.get(record_key).data)
    except ObjectNotFound:
        return None
    if record.body_sha256 != digest:
        raise IdempotencyConflict("this Idempotency-Key was used with a different body", job_id=record.job_id)
    version = AdapterVersion.from_job_id(record.job_id)
    try:
        return JobRecord.from_json(store.get(version.job_key).data)
    except ObjectNotFound:
        return None  # its adapter was deleted since: treat the key as fresh
