"""Reading the registry: a user's adapters with their versions and reports, the current version, jobs still
to run, and deletion of an adapter or a whole user (with the refits that erase their trace from bases)."""

from __future__ import annotations

from typing import Any

from soppu.auth import KeyRing
from soppu.errors import ObjectNotFound
from soppu.registry.pipeline import Pipeline, member_key
from soppu.registry.records import JobRecord, JobState, Manifest, Pointer, Tombstone, now
from soppu.registry.results import AdapterEntry, VersionEntry
from soppu.registry.versions import latest_version, read_tombstone
from soppu.store.base import ObjectStore
from soppu.store.layout import (
    AdapterVersion,
    adapter_jobs_prefix,
    adapter_prefixes,
    adapters_prefix,
    cohorts_prefix,
    jobs_prefix,
    parse_cohort_state_key,
    parse_original_key,
    pointer_key,
    tombstone_key,
    user_prefixes,
)

__all__ = [
    "delete_adapter",
    "delete_user",
    "list_adapters",
    "pending_jobs",
    "read_manifest",
    "read_pointer",
    "user_is_deleting",
]


def read_pointer(store: ObjectStore, user_id: str, adapter: str) -> Pointer | None:
    try:
        return Pointer.from_json(store.get(pointer_key(user_id, adapter)).data)
    except ObjectNotFound:
        return None


def read_manifest(store: ObjectStore, version: AdapterVersion) -> Manifest | None:
    try:
        return Manifest.from_json(store.get(version.manifest_key).data)
    except ObjectNotFound:
        return None


def _adapter_names(store: ObjectStore, user_id: str) -> list[str]:
    parsed = (parse_original_key(info.key) for info in store.list(adapters_prefix(user_id)))
    return sorted({ref.adapter for ref in parsed if ref is not None and ref.user_id == user_id})


def list_adapters(store: ObjectStore, user_id: str) -> list[AdapterEntry]:
    """Each adapter of ``user_id``: name, current version, and every version with its job state and report."""
    adapters = []
    for name in _adapter_names(store, user_id):
        pointer = read_pointer(store, user_id, name)
        versions: list[VersionEntry] = []
        for info in store.list(adapter_jobs_prefix(user_id, name)):
            job = JobRecord.from_json(store.get(info.key).data)
            manifest = read_manifest(store, AdapterVersion(user_id, name, job.version))
            versions.append(
                VersionEntry(
                    version=job.version,
                    job_id=job.job_id,
                    state=job.state,
                    kind=job.kind,
                    served_from=manifest.served_from if manifest else None,
                    error=job.error,
                    report=job.report,
                )
            )
        versions.sort(key=lambda v: v.version)
        current = pointer.version if pointer else None
        adapters.append(AdapterEntry(name=name, current_version=current, versions=tuple(versions)))
    return adapters


def pending_jobs(store: ObjectStore) -> list[AdapterVersion]:
    """Jobs that are queued or were running when a service stopped, or that the store failed: a restart runs
    them (again)."""
    pending = []
    for info in store.list(jobs_prefix()):
        job = JobRecord.from_json(store.get(info.key).data)
        if job.state in (JobState.QUEUED, JobState.RUNNING) or job.failed_by_store:
            pending.append(AdapterVersion(job.user_id, job.adapter, job.version))
    return sorted(pending, key=lambda v: (v.user_id, v.adapter, v.version))


def _leave_cohorts(pipeline: Pipeline, user_id: str, adapters: list[str]) -> list[dict[str, Any]]:
    """Take the adapters out of every cohort; refit (or retire) each basis their data fitted."""
    store, refits = pipeline.store, []
    leaving = {member_key(user_id, a) for a in adapters}
    cohorts = (parse_cohort_state_key(info.key) for info in list(store.list(cohorts_prefix())))
    for cohort in filter(None, cohorts):
        with pipeline.lock(f"cohort:{cohort}"):
            state = pipeline.load_cohort(cohort)
            holders = {key for keys in state.stale_bases.values() for key in keys}
            if not leaving & (set(state.members) | set(state.contributors) | holders):
                continue
            pipeline.sweep_stale(state, gone=frozenset(leaving))  # a replaced basis only they still used goes
            influenced = bool(leaving & set(state.contributors))
            state.members = {k: v for k, v in state.members.items() if k not in leaving}
            state.pending = [k for k in state.pending if k not in leaving]
            state.contributors = [k for k in state.contributors if k not in leaving]
            if not influenced:
                pipeline.save_cohort(state)
            elif state.members:
                refits.append(pipeline.refit_locked(state))  # new basis without them; the old one is deleted
            else:
                if state.basis_key:
                    store.delete(state.basis_key)
                # The state stays, empty: its basis_version is the high-water mark, so a later cohort of the
                # same name never writes other bytes under a basis key an engine may have cached.
                state.basis_key, state.needs_refit = None, False
                pipeline.save_cohort(state)
                refits.append({"cohort": cohort, "retired": True})
    return refits


def _remember_versions(store: ObjectStore, user_id: str, tombstone: Tombstone, adapters: list[str]) -> None:
    # Read just before the objects go, so a version an upload claimed meanwhile is counted too.
    for adapter in adapters:
        tombstone.remember(adapter, latest_version(store, user_id, adapter))


def _save_tombstone(store: ObjectStore, user_id: str, tombstone: Tombstone) -> None:
    tombstone.updated_at = now()
    store.put(tombstone_key(user_id), tombstone.to_json())


def delete_adapter(pipeline: Pipeline, user_id: str, adapter: str) -> dict[str, Any]:
    store = pipeline.store
    if adapter not in _adapter_names(store, user_id):
        raise ObjectNotFound(f"user {user_id!r} has no adapter {adapter!r}")
    refits = _leave_cohorts(pipeline, user_id, [adapter])
    tombstone = read_tombstone(store, user_id)
    _remember_versions(store, user_id, tombstone, [adapter])
    _save_tombstone(store, user_id, tombstone)  # before the objects go: a later upload numbers past them
    removed = [key for prefix in adapter_prefixes(user_id, adapter) for key in store.delete_prefix(prefix)]
    return {"removed": sorted(removed), "refits": refits}


def delete_user(pipeline: Pipeline, keys: KeyRing, user_id: str) -> dict[str, Any]:
    """Erase the user. The tombstone says ``deleting`` from the first step to the last, and an upload or a key
    issue that finds it so withdraws what it stored (see :func:`user_is_deleting`); it also keeps every
    adapter's last version, so the user's version ids are never given to other bytes."""
    store = pipeline.store
    tombstone = read_tombstone(store, user_id)
    tombstone.deleting = True
    _save_tombstone(store, user_id, tombstone)
    revoked = keys.revoke_user(user_id)  # first: the user can do nothing while the rest goes
    adapters = _adapter_names(store, user_id)
    refits = _leave_cohorts(pipeline, user_id, adapters)
    _remember_versions(store, user_id, tombstone, _adapter_names(store, user_id))
    _save_tombstone(store, user_id, tombstone)
    removed = [key for prefix in user_prefixes(user_id) for key in store.delete_prefix(prefix)]
    # Again at the end: a key issued while this ran (its index entry written after the first pass) goes too.
    revoked += [key_id for key_id in keys.revoke_user(user_id) if key_id not in revoked]
    tombstone.deleting, tombstone.deleted_at = False, now()
    _save_tombstone(store, user_id, tombstone)
    return {"removed": sorted(removed), "revoked_keys": revoked, "refits": refits}


def user_is_deleting(store: ObjectStore, user_id: str) -> bool:
    """Whether a deletion of ``user_id`` is under way (or was interrupted: a repeated DELETE finishes it)."""
    return read_tombstone(store, user_id).deleting
