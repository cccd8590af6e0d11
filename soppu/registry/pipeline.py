"""From an accepted upload to a served version: the compression job, cohort refits, and publishing.

A job (``jobs/{user}/{adapter}/{version}.json``) is idempotent: every artifact is written create-only (an
object left by an interrupted run is kept, since the same input gives the same bytes), and the pointer only
ever moves forward. A restarted service simply runs every queued or running job again.

Publishing order, for every version: (1) the compressed artifacts (bases, when fitted; the core), (2) the
PEFT export LoRAX loads, under a fresh versioned prefix, (3) the version manifest, (4) the switch of the
user's current-version pointer. Readers that follow the pointer therefore never see a half-published version.

Cohorts: adapters with the same base model, modules and shapes share a cohort and its basis. The first member
fits the basis alone; later members are projected onto it (the fast path). Every member then climbs the
fallback ladder (:mod:`soppu.registry.ladder`) until a step passes the quality gate, and its report says
which step served it and why the ones before failed. A member served from its ``original`` queues a refit,
which fits the basis to every member's original and publishes a new version of every member (each climbing
the ladder again).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

from soppu.adapter import CONFIG_NAME, WEIGHTS_NAME, LoraAdapter, adapter_files, read_adapter
from soppu.adapter.probes import parse_probes
from soppu.adapter.served_form import served_form
from soppu.compression import Compression, compress, project
from soppu.compression.format import bases_bytes, core_bytes, read_bases
from soppu.compression.model import Cluster, CompressedAdapter
from soppu.errors import ObjectChanged, ObjectExists, ObjectNotFound, SoppuError, StoreError
from soppu.failpoints import failpoint
from soppu.models import linear_shapes
from soppu.peft_files import PROBES_NAME
from soppu.registry.ladder import climb
from soppu.registry.leases import DEFAULT_TTL_S, Leases
from soppu.registry.policy import CompressionPolicy, QualityGate, cohort_name
from soppu.registry.records import (
    CohortState,
    JobRecord,
    JobState,
    Manifest,
    Pointer,
    ServedFrom,
    member_key,
    now,
    split_member,
)
from soppu.registry.report import version_report
from soppu.registry.results import VersionReport
from soppu.registry.retirement import current_basis, retire_basis, sweep_stale
from soppu.registry.versions import allocate_version, latest_version, withdraw_upload
from soppu.store.base import ObjectStore
from soppu.store.layout import (
    AdapterVersion,
    basis_key,
    cohort_state_key,
    relative_ref,
)

__all__ = ["Pipeline", "member_key"]

log = logging.getLogger(__name__)


def _core_name(version: AdapterVersion) -> str:
    # A valid adapter name for the core file's metadata ('/' is not allowed there).
    return f"{version.user_id}.{version.adapter}"


class Pipeline:
    """Runs jobs and refits against one store. Safe for threads and for replicas sharing the store: a lock per
    cohort and per user (:mod:`soppu.registry.leases`), compare-and-swap pointer switches."""

    def __init__(
        self, store: ObjectStore, policy: CompressionPolicy, gate: QualityGate, *, lease_ttl_s: float = DEFAULT_TTL_S
    ) -> None:
        self.store = store
        self.policy = policy
        self.gate = gate
        self.leases = Leases(store, lease_ttl_s)
        self._bases: dict[str, Compression] = {}  # basis key -> the compression skeleton (bases, no adapters)

    @functools.cached_property
    def base_shapes(self) -> dict[str, tuple[int, int]] | None:
        """The served base model's linear layers (when the gate has the model), which every upload must fit."""
        return None if self.gate.model is None else linear_shapes(self.gate.model[0])

    def lock(self, name: str) -> AbstractContextManager[None]:
        """The lock ``name`` (a user's jobs, a cohort), held across threads and every replica on this store."""
        return self.leases.hold(name)

    # --- records ---------------------------------------------------------------------------------------

    def load_job(self, version: AdapterVersion) -> JobRecord:
        return JobRecord.from_json(self.store.get(version.job_key).data)

    def save_job(self, job: JobRecord) -> None:
        job.updated_at = now()
        self.store.put(AdapterVersion(job.user_id, job.adapter, job.version).job_key, job.to_json())

    def load_cohort(self, cohort: str, base_model: str | None = None) -> CohortState:
        try:
            return CohortState.from_json(self.store.get(cohort_state_key(cohort)).data)
        except ObjectNotFound:
            return CohortState(cohort=cohort, base_model=base_model)

    def save_cohort(self, state: CohortState) -> None:
        state.updated_at = now()
        self.store.put(cohort_state_key(state.cohort), state.to_json())

    def read_original(self, version: AdapterVersion) -> tuple[LoraAdapter, dict[str, bytes]]:
        """The upload and its files (``probes.json`` among them when it carried probes)."""
        config_key, weights_key = version.original_keys()
        files = {CONFIG_NAME: self.store.get(config_key).data, WEIGHTS_NAME: self.store.get(weights_key).data}
        with contextlib.suppress(ObjectNotFound):
            files[PROBES_NAME] = self.store.get(version.probes_key).data
        return read_adapter(files), files

    def _put_once(self, key: str, data: bytes) -> None:
        # An object there was written by an earlier run of the same step: same input, same bytes.
        with contextlib.suppress(ObjectExists):
            self.store.put(key, data, create_only=True)

    # --- jobs ------------------------------------------------------------------------------------------

    def run_job(self, version: AdapterVersion) -> JobRecord:
        """Run (or finish, or skip if already finished) the job of ``version``."""
        job = self.load_job(version)
        if job.state == JobState.DONE or (job.state == JobState.FAILED and not job.failed_by_store):
            return job
        job.state, job.attempts = JobState.RUNNING.value, job.attempts + 1
        self.save_job(job)
        failpoint("job.running")
        try:
            original, files = self.read_original(version)
            cohort = cohort_name(original)
            with self.lock(f"cohort:{cohort}"):
                state = self.load_cohort(cohort, original.base_model)
                report = self._compress_member(state, version, original, files)
                if state.needs_refit and len(state.pending) >= self.policy.refit_after:
                    self.refit_locked(state)
                    report = replace(report, refit=True)
        except StoreError:
            # Not the input's fault: the record stays "running", and the job runs again (the runner retries it,
            # a restart resumes it) until the store lets it finish. It is never failed for good.
            raise
        except SoppuError as e:
            log.warning("job %s failed: [%s] %s", version.job_id, e.code, e.message)
            job.state, job.error = JobState.FAILED.value, {"code": e.code, "message": e.message}
            self.save_job(job)
            return job
        job.state, job.report, job.error = JobState.DONE.value, report, None
        self.save_job(job)
        return job

    def _compress_member(
        self, state: CohortState, version: AdapterVersion, original: LoraAdapter, files: dict[str, bytes]
    ) -> VersionReport:
        key = member_key(version.user_id, version.adapter)
        name = _core_name(version)
        if state.basis_key is None:
            # The cohort's first member: fit its basis to this adapter alone.
            compression = compress([(name, original)], **self._compress_args())
            self._publish_basis(state, compression, contributors=[key])
            compressed = compression.adapters[0]
        else:
            compression = self._skeleton(state.basis_key)
            compressed = project(compression, name, original, device=self.policy.device)
            compression = replace(compression, adapters=[compressed])
        report = self._publish(version, state, compression, compressed, original, files)
        # Jobs of one adapter may finish out of order (concurrent uploads): the member stays its latest version,
        # as the pointer does, so a refit never republishes an older upload over a newer one.
        state.members[key] = max(version.version, state.members.get(key, 0))
        if report.served_from == ServedFrom.ORIGINAL and key not in state.pending:
            state.pending.append(key)
            state.needs_refit = True
        self.sweep_stale(state)  # this member's newer version may be what kept a replaced basis
        self.save_cohort(state)
        return report

    def _compress_args(self) -> dict[str, Any]:
        p = self.policy
        return {"mode": p.mode, "policy": p.rank_policy(), "device": p.device, "seed": p.seed}

    def _skeleton(self, key: str) -> Compression:
        if key not in self._bases:
            bases = read_bases(self.store.get(key).data)
            meta = bases.meta
            self._bases[key] = Compression(meta.mode, meta.base_model, meta.target_modules, [Cluster(bases.bases)], [])
        return self._bases[key]

    def _publish_basis(self, state: CohortState, compression: Compression, contributors: list[str]) -> None:
        number = state.basis_version + 1
        key = basis_key(state.cohort, number)
        self._put_once(key, bases_bytes(compression.clusters[0], compression))
        failpoint("publish.basis")
        self._bases[key] = replace(compression, adapters=[])
        state.basis_version, state.basis_key, state.contributors = number, key, sorted(contributors)

    def _publish(
        self,
        version: AdapterVersion,
        state: CohortState,
        compression: Compression,
        compressed: CompressedAdapter,
        original: LoraAdapter,
        files: dict[str, bytes],
    ) -> VersionReport:
        probes = parse_probes(files[PROBES_NAME]) if PROBES_NAME in files else ()
        key = member_key(version.user_id, version.adapter)
        compressed, exported, ladder = climb(
            self.gate, self.policy, compression, compressed, original, probes, key, state.contributors
        )
        report = version_report(state, key, compression, compressed, original, ladder, len(probes))
        assert state.basis_key is not None
        if report.served_from == ServedFrom.COMPRESSED:
            ref = relative_ref(version.core_key, state.basis_key)
            self._put_once(version.core_key, core_bytes(compression, compressed, bases_ref=ref))
            failpoint("publish.core")
            core_prefix: str | None = version.core_prefix
        else:
            exported, core_prefix = original, None
        # Originals too: LoRAX would mis-scale a raw rsLoRA, patterned or odd-rank upload (soppu.adapter.served_form).
        export = adapter_files(served_form(exported, shapes=self.base_shapes, dtype=self.policy.served_dtype()))
        export_files = {CONFIG_NAME: export.config, WEIGHTS_NAME: export.weights}
        for key, name in zip(version.export_keys(), (CONFIG_NAME, WEIGHTS_NAME), strict=True):
            self._put_once(key, export_files[name])
        failpoint("publish.export")
        reasons = "; ".join(report.gate.reasons) or "gate passed"
        log.info("%s: served by %s (%s)", version.job_id, report.served_by, reasons)
        manifest = Manifest(
            user_id=version.user_id,
            adapter=version.adapter,
            version=version.version,
            served_from=report.served_from.value,
            export_prefix=version.export_prefix,
            core_prefix=core_prefix,
            cohort=state.cohort,
            basis_key=state.basis_key if core_prefix else None,
            base_model=original.base_model,
            report=report.to_dict(),
        )
        self._put_once(version.manifest_key, manifest.to_json())
        failpoint("publish.manifest")
        self.switch_pointer(version)
        failpoint("publish.pointer")
        return report

    def switch_pointer(self, version: AdapterVersion) -> bool:
        """Point the user's adapter at ``version`` unless a later version is already current (step 4).

        A compare-and-swap on the pointer object (create-only, or ``if_match`` its ETag), retried when another
        writer got there first: across any number of compressor replicas, a pointer never moves back."""
        pointer = Pointer(version.version, version.manifest_key).to_json()
        while True:
            try:
                stored = self.store.get(version.pointer_key)
            except ObjectNotFound:
                stored = None
            if stored is not None and Pointer.from_json(stored.data).version >= version.version:
                return False
            try:
                if stored is None:
                    self.store.put(version.pointer_key, pointer, create_only=True)
                else:
                    self.store.put(version.pointer_key, pointer, if_match=stored.info.etag)
            except (ObjectExists, ObjectChanged, ObjectNotFound):
                continue  # another writer moved (or a deletion removed) it since the read: read it again
            break
        return True

    # --- refits ----------------------------------------------------------------------------------------

    def refit(self, cohort: str) -> dict[str, Any]:
        with self.lock(f"cohort:{cohort}"):
            state = self.load_cohort(cohort)
            if not state.members:
                raise SoppuError(f"cohort {cohort!r} has no members", code="cohort_not_found")
            return self.refit_locked(state)

    def refit_locked(self, state: CohortState) -> dict[str, Any]:
        """Fit the cohort's basis to every member's newest original and publish a new version of every member.
        The caller holds the cohort's lock.

        Per-user state orders a refit against uploads, never timing: a member whose newest upload belongs to
        another cohort leaves this one (its refit here would republish an older adapter over it), and a member
        that another upload overtakes while the basis is fitted gets no refit version (that upload's own job
        publishes it, on the new basis, since it waits for this cohort's lock)."""
        self.sweep_stale(state)
        sources: dict[str, tuple[AdapterVersion, LoraAdapter, dict[str, bytes]]] = {}
        for key, number in sorted(state.members.items()):
            user, adapter = split_member(key)
            found = self._newest_original(state, user, adapter, number)
            if found is None:
                self._leave(state, key)
            else:
                sources[key] = found
        if not sources:
            self.save_cohort(state)
            return {"cohort": state.cohort, "basis_version": state.basis_version, "members": {}}
        named = [(_core_name(version), original) for version, original, _files in sources.values()]
        compression = compress(named, **self._compress_args())
        old_basis = state.basis_key
        self._publish_basis(state, compression, contributors=list(sources))
        state.pending, state.needs_refit = [], False
        published: dict[str, dict[str, Any]] = {}
        overtaken = []
        for (key, (source, original, files)), compressed in zip(sources.items(), compression.adapters, strict=True):
            version = allocate_version(self.store, source.user_id, source.adapter, files, kind="refit")
            newer = latest_version(self.store, source.user_id, source.adapter, below=version.version)
            if newer > source.version:  # accepted while the basis was fitted: it, not this, is the newest
                withdraw_upload(self.store, version)  # never published; left, it would pass for the newest
                overtaken.append(key)
                published[key] = {"superseded_by": newer}
                continue
            report = self._publish(version, state, compression, compressed, original, files)
            self.save_job(replace(self.load_job(version), state=JobState.DONE.value, report=report))
            state.members[key] = version.version
            if report.served_from == ServedFrom.ORIGINAL:
                state.pending.append(key)
            published[key] = {"version": version.version, "served_from": report.served_from.value}
        failpoint("refit.published")
        if old_basis and old_basis != state.basis_key:
            self._retire(old_basis, state, holders=overtaken)
        self.save_cohort(state)
        return {"cohort": state.cohort, "basis_version": state.basis_version, "members": published}

    def _leave(self, state: CohortState, key: str) -> None:
        """``key`` is no longer a member (its newest upload went to another cohort). If its current version
        still uses this cohort's basis, that basis is kept until it moves on (see :meth:`sweep_stale`)."""
        state.members.pop(key, None)
        state.pending = [k for k in state.pending if k != key]
        state.contributors = [k for k in state.contributors if k != key]
        if state.basis_key is not None and current_basis(self.store, key) == state.basis_key:
            holders = state.stale_bases.setdefault(state.basis_key, [])
            if key not in holders:
                holders.append(key)

    def _newest_original(
        self, state: CohortState, user: str, adapter: str, number: int
    ) -> tuple[AdapterVersion, LoraAdapter, dict[str, bytes]] | None:
        """The member's newest upload (its version, adapter and files), which a refit must publish: the refit's
        new version outnumbers it, and the pointer never moves back. None if that upload is of another cohort."""
        newest = latest_version(self.store, user, adapter)
        if newest > number:
            with contextlib.suppress(ObjectNotFound):  # an upload withdrawn after losing an idempotency race
                version = AdapterVersion(user, adapter, newest)
                original, files = self.read_original(version)
                return (version, original, files) if cohort_name(original) == state.cohort else None
        version = AdapterVersion(user, adapter, number)
        return (version, *self.read_original(version))

    def sweep_stale(self, state: CohortState, gone: frozenset[str] = frozenset()) -> None:
        """Retire every replaced basis that no current version uses any more (:mod:`soppu.registry.retirement`;
        ``gone``: members being deleted, whose versions go with them)."""
        for basis in sweep_stale(self.store, state, gone):
            self._bases.pop(basis, None)

    def _retire(self, old_basis: str, state: CohortState, holders: Sequence[str]) -> None:
        if retire_basis(self.store, old_basis, state, holders=holders):
            self._bases.pop(old_basis, None)
