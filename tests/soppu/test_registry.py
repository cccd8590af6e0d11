"""The registry core on both store backends: version claims, idempotency, jobs that publish in order and can
be rerun, the quality gate, refits, and deletion that leaves nothing of a user behind."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from soppu.adapter import CONFIG_NAME, WEIGHTS_NAME, read_adapter
from soppu.auth import KeyRing, Role
from soppu.registry import JobState, Manifest, Pointer, ServedFrom
from soppu.registry.catalog import delete_user, list_adapters, pending_jobs
from soppu.registry.pipeline import Pipeline
from soppu.registry.policy import CompressionPolicy, GateThresholds, QualityGate
from soppu.registry.versions import IdempotencyConflict, accept_upload, allocate_version
from soppu.store import LocalStore, ObjectStore
from soppu.store.layout import AdapterVersion


@pytest.fixture(scope="module")
def uploads(examples_dir: Path) -> dict[str, dict[str, bytes]]:
    users = json.loads((examples_dir / "users.json").read_text())["users"]
    return {
        u["user_id"]: {
            n: (examples_dir / "adapters" / u["user_id"] / n).read_bytes() for n in (CONFIG_NAME, WEIGHTS_NAME)
        }
        for u in users
    }


def _pipeline(store: ObjectStore, **policy: Any) -> Pipeline:
    return Pipeline(store, CompressionPolicy(device="cpu", **policy), QualityGate())


def _keys(store: ObjectStore) -> list[str]:
    return sorted(info.key for info in store.list(""))


def test_concurrent_claims_get_distinct_increasing_versions(local_store: ObjectStore, uploads) -> None:
    files = next(iter(uploads.values()))
    with ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(lambda _: allocate_version(local_store, "u1", "default", files).version, range(8)))
    assert sorted(versions) == list(range(1, 9))


def test_idempotency_key_same_body_same_job_other_body_conflict(store: ObjectStore, uploads) -> None:
    first, second = list(uploads.values())[:2]
    job, new = accept_upload(store, "u1", "default", first, "key-1")
    again, new_again = accept_upload(store, "u1", "default", first, "key-1")
    assert new and not new_again and again.job_id == job.job_id
    before = _keys(store)
    with pytest.raises(IdempotencyConflict):
        accept_upload(store, "u1", "default", second, "key-1")
    assert _keys(store) == before  # nothing stored for the refused upload


def test_an_idempotency_key_is_scoped_to_one_adapter(store: ObjectStore, uploads) -> None:
    # Issue 13 item 23: the same key for another adapter name answered the first adapter's job.
    first, second = list(uploads.values())[:2]
    job, _ = accept_upload(store, "u1", "default", first, "key-1")
    other, new = accept_upload(store, "u1", "work", second, "key-1")
    assert new and other.adapter == "work" and other.job_id != job.job_id


def test_job_publishes_in_order_and_a_rerun_changes_nothing(store: ObjectStore, uploads) -> None:
    pipeline = _pipeline(store)
    user, files = next(iter(uploads.items()))
    job, _ = accept_upload(store, user, "default", files)
    version = AdapterVersion.from_job_id(job.job_id)
    done = pipeline.run_job(version)
    assert done.state == JobState.DONE and done.report is not None and done.report.served_from == ServedFrom.COMPRESSED
    manifest = Manifest.from_json(store.get(version.manifest_key).data)
    assert manifest.core_prefix == version.core_prefix and store.exists(version.core_key)
    assert all(store.exists(key) for key in version.export_keys())
    assert Pointer.from_json(store.get(version.pointer_key).data).version == version.version
    # The export is the compressed form as plain LoRA, and it is a valid adapter.
    names = (CONFIG_NAME, WEIGHTS_NAME)
    export = read_adapter({n: store.get(k).data for n, k in zip(names, version.export_keys(), strict=True)})
    assert export.modules.keys() == read_adapter(files).modules.keys()

    # A crash after publishing but before the job was marked done: the rerun finishes with the same objects.
    snapshot = {key: store.get(key).info.etag for key in _keys(store) if not key.startswith(("jobs/", "cohorts/"))}
    record = pipeline.load_job(version)
    record.state = JobState.RUNNING.value
    pipeline.save_job(record)
    assert pending_jobs(store) == [version]
    assert pipeline.run_job(version).state == JobState.DONE
    assert {k: store.get(k).info.etag for k in snapshot} == snapshot
    assert pending_jobs(store) == []


def test_pointer_never_moves_back(local_store: ObjectStore, uploads) -> None:
    pipeline = _pipeline(local_store)
    files = next(iter(uploads.values()))
    versions = [AdapterVersion.from_job_id(accept_upload(local_store, "u1", "a", files)[0].job_id) for _ in range(2)]
    for version in reversed(versions):  # the later upload finishes first
        pipeline.run_job(version)
    assert Pointer.from_json(local_store.get(versions[0].pointer_key).data).version == 2


# One compressor replica's pointer switches, in a shuffled order, for the versions given on the command line;
# it starts switching when the file ``go`` appears (after its slow imports), so the replicas overlap.
_SWITCHER = """
import os, pathlib, random, sys, time
from soppu.registry.pipeline import Pipeline
from soppu.registry.policy import CompressionPolicy, QualityGate
from soppu.store import open_store
from soppu.store.layout import AdapterVersion
pipeline = Pipeline(open_store(sys.argv[1]), CompressionPolicy(device="cpu"), QualityGate())
versions = [int(v) for v in sys.argv[2].split(",")]
random.Random(sys.argv[3]).shuffle(versions)
pathlib.Path(sys.argv[4]).touch()
while not os.path.exists(sys.argv[5]):
    time.sleep(0.001)
for version in versions:
    pipeline.switch_pointer(AdapterVersion("u1", "a", version))
"""
# A reader of the pointer, until told to stop: how many times it saw the version go down.
_WATCHER = """
import os, sys
from soppu.errors import ObjectNotFound
from soppu.registry import Pointer
from soppu.store import open_store
from soppu.store.layout import AdapterVersion
store, key, stop = open_store(sys.argv[1]), AdapterVersion("u1", "a", 1).pointer_key, sys.argv[2]
seen, backwards = 0, 0
while not os.path.exists(stop):
    try:
        version = Pointer.from_json(store.get(key).data).version
    except ObjectNotFound:
        continue
    backwards += version < seen
    seen = max(seen, version)
print(backwards)
"""


def test_a_pointer_never_moves_back_across_replica_processes(tmp_path: Path) -> None:
    # Issue 15: the pointer's lock was per process, so two replicas could each read v5, then write v7 and v6 in
    # that order. Two processes switch odd and even versions (1..400) in shuffled orders while a third reads the
    # pointer: it must never see the version go down, and the last word is the highest version.
    store, stop, top = LocalStore(tmp_path / "store"), tmp_path / "stop", 400
    watcher = subprocess.Popen([sys.executable, "-c", _WATCHER, str(store.root), str(stop)], stdout=subprocess.PIPE)
    go, ready = tmp_path / "go", [tmp_path / "ready-a", tmp_path / "ready-b"]
    switchers = []
    for first, seed in ((1, "a"), (2, "b")):
        versions = ",".join(map(str, range(first, top + 1, 2)))
        args = [str(store.root), versions, seed, str(ready[first - 1]), str(go)]
        switchers.append(subprocess.Popen([sys.executable, "-c", _SWITCHER, *args]))
    while not all(path.exists() for path in ready) and all(proc.poll() is None for proc in switchers):
        time.sleep(0.01)  # both replicas up; the condition, not the clock, decides
    go.touch()
    assert [proc.wait(timeout=120) for proc in switchers] == [0, 0]
    stop.touch()
    backwards = int(watcher.communicate(timeout=60)[0])
    assert backwards == 0
    assert Pointer.from_json(store.get(AdapterVersion("u1", "a", 1).pointer_key).data).version == top


def test_gate_failure_serves_the_original_and_a_refit_brings_everyone_back(local_store, uploads) -> None:
    pipeline = _pipeline(local_store, rank=32, refit_after=1)
    reports = {}
    for user, files in list(uploads.items())[:3]:
        job, _ = accept_upload(local_store, user, "default", files)
        reports[user] = pipeline.run_job(AdapterVersion.from_job_id(job.job_id)).report
    first, second = list(reports)[:2]
    assert reports[first].served_from == ServedFrom.COMPRESSED
    # Projected onto the first user's basis, the second user's unrelated adapter fails the gate ...
    assert reports[second].served_from == ServedFrom.ORIGINAL and not reports[second].gate.passed
    # ... which queued a refit over every member: each has a newer version on a new basis, and with R = 32
    # for three rank-8 adapters the fit is exact, so everyone is served compressed.
    assert reports[second].refit
    for user in reports:
        adapter = list_adapters(local_store, user)[0]
        current = next(v for v in adapter.versions if v.version == adapter.current_version)
        assert current.served_from == ServedFrom.COMPRESSED, user
    assert len([k for k in _keys(local_store) if k.startswith("bases/")]) == 1  # older bases retired


def _current(store: ObjectStore, user: str) -> Manifest:
    pointer = Pointer.from_json(store.get(AdapterVersion(user, "default", 1).pointer_key).data)
    return Manifest.from_json(store.get(pointer.manifest_key).data)


def test_an_upload_accepted_while_a_refit_fits_is_the_one_served(local_store: ObjectStore, uploads) -> None:
    # Issue 13 item 2: the refit read the members' uploads, fitted, then published a newer version of the old
    # adapter for each; an upload accepted during the fit was never served (its job "done", the pointer beyond it).
    store, users = local_store, list(uploads)[:3]
    late = list(uploads.values())[3]
    accepted: list[AdapterVersion] = []
    armed = False

    class UploadDuringFit(Pipeline):
        def _publish_basis(self, state: Any, compression: Any, contributors: list[str]) -> None:
            if armed and not accepted:  # the refit's fit is done; an upload arrives now
                accepted.append(AdapterVersion.from_job_id(accept_upload(store, users[0], "default", late)[0].job_id))
            super()._publish_basis(state, compression, contributors)

    pipeline = UploadDuringFit(store, CompressionPolicy(device="cpu", rank=32), QualityGate())
    for user in users:
        pipeline.run_job(AdapterVersion.from_job_id(accept_upload(store, user, "default", uploads[user])[0].job_id))
    cohort = _current(store, users[0]).cohort
    old_basis = pipeline.load_cohort(cohort).basis_key
    armed = True
    result = pipeline.refit(cohort)
    [upload] = accepted
    assert result["members"][f"{users[0]}/default"]["superseded_by"] == upload.version
    assert _current(store, users[0]).basis_key == old_basis  # still served, so that basis stays for now
    assert pipeline.run_job(upload).state == JobState.DONE
    served = _current(store, users[0])  # the late upload's version, or a refit it queued, of the same bytes
    weights = store.get(AdapterVersion(users[0], "default", served.version).original_keys()[1]).data
    assert served.version >= upload.version and weights == late[WEIGHTS_NAME]
    assert served.basis_key == pipeline.load_cohort(cohort).basis_key
    assert not store.exists(old_basis) and pipeline.load_cohort(cohort).stale_bases == {}  # retired once unused
    for user in users[1:]:
        assert _current(store, user).basis_key == pipeline.load_cohort(cohort).basis_key


def test_a_member_whose_new_upload_is_in_another_cohort_leaves_the_old_one(local_store: ObjectStore, uploads) -> None:
    # Issue 13 item 3: after an upload with other modules (another cohort), the old cohort's refit moved the
    # user's pointer back to the old adapter.
    from tests.support.adapter_factory import make_files, parts

    store, users = local_store, list(uploads)[:3]
    pipeline = _pipeline(store, rank=32)
    for user in users:
        pipeline.run_job(AdapterVersion.from_job_id(accept_upload(store, user, "default", uploads[user])[0].job_id))
    old = _current(store, users[0])
    other = parts(make_files(seed=3))
    moved = AdapterVersion.from_job_id(accept_upload(store, users[0], "default", other)[0].job_id)
    assert pipeline.run_job(moved).state == JobState.DONE
    assert _current(store, users[0]).cohort != old.cohort
    result = pipeline.refit(old.cohort)
    assert f"{users[0]}/default" not in result["members"]
    state = pipeline.load_cohort(old.cohort)
    assert f"{users[0]}/default" not in state.members and f"{users[0]}/default" not in state.contributors
    assert _current(store, users[0]).version == moved.version
    assert not store.exists(old.basis_key)


def test_deleting_a_user_leaves_nothing_of_theirs(store: ObjectStore, uploads) -> None:
    pipeline = _pipeline(store, rank=32)
    keys = KeyRing(store)
    users = list(uploads)[:3]
    for user in users:
        job, _ = accept_upload(store, user, "default", uploads[user], "idem")
        pipeline.run_job(AdapterVersion.from_job_id(job.job_id))
        keys.issue(Role.USER, user)
    gone = users[0]
    result = delete_user(pipeline, keys, gone)
    assert result["revoked_keys"] and result["refits"]
    remaining = "\n".join(store.get(k).data.decode(errors="replace") for k in _keys(store) if k.endswith(".json"))
    assert not [k for k in _keys(store) if gone in k]
    assert gone not in remaining  # no record (cohort members, contributors, manifests) names them
    for user in users[1:]:
        assert list_adapters(store, user)[0].current_version is not None


def test_version_and_basis_ids_are_never_reused_after_a_deletion(store: ObjectStore, uploads) -> None:
    # Issue 13 item 6: numbering restarted at v00000001 after a deletion, so exports/... (which LoRAX caches by
    # id forever) and bases/... keys were written again with other bytes, and an old Idempotency-Key answered
    # another upload.
    pipeline = _pipeline(store)
    keys = KeyRing(store)
    first, second = list(uploads.values())[:2]

    def publish(files: dict[str, bytes], adapter: str = "default", idem: str | None = None) -> AdapterVersion:
        job, _ = accept_upload(store, "dora", adapter, files, idem)
        version = AdapterVersion.from_job_id(job.job_id)
        assert pipeline.run_job(version).state == JobState.DONE
        return version

    old = publish(first, idem="k")
    old_basis = pipeline.load_cohort(Manifest.from_json(store.get(old.manifest_key).data).cohort).basis_key
    delete_user(pipeline, keys, "dora")
    assert not [k for k in _keys(store) if "dora" in k]  # the tombstone is named by a digest
    new = publish(second, idem="k")  # the same key, after the deletion: a new upload, under a new id
    assert new.version > old.version and new.export_prefix != old.export_prefix
    new_basis = pipeline.load_cohort(Manifest.from_json(store.get(new.manifest_key).data).cohort).basis_key
    assert new_basis != old_basis

    from soppu.registry.catalog import delete_adapter

    delete_adapter(pipeline, "dora", "default")
    assert publish(first).version > new.version
    assert publish(first, adapter="other").version == 1  # per adapter name


def test_a_deletion_in_progress_is_visible_and_ends(store: ObjectStore, uploads) -> None:
    from soppu.registry.catalog import user_is_deleting

    pipeline, keys = _pipeline(store), KeyRing(store)
    seen: list[bool] = []

    class Watching(KeyRing):  # the deletion's revocation step runs while the tombstone says "deleting"
        def revoke_user(self, user_id: str) -> list[str]:
            seen.append(user_is_deleting(store, user_id))
            return super().revoke_user(user_id)

    accept_upload(store, "eve", "default", next(iter(uploads.values())))
    delete_user(pipeline, Watching(store), "eve")
    assert seen and all(seen) and not user_is_deleting(store, "eve")
    assert keys.user_keys("eve") == []


@pytest.fixture(scope="module")
def judging_gate(examples_dir: Path) -> QualityGate:
    """The gate with the example model loaded: it judges behaviour and can fit (kept small for the tests)."""
    from soppu.compression.distill import DistillSettings
    from soppu.models import load_causal_lm

    return QualityGate(
        model=load_causal_lm(examples_dir / "base", "cpu"),
        judge=DistillSettings(texts=4, tokens=12, seed=1),
        fitting=DistillSettings(texts=4, tokens=12, steps=20),
    )


def test_the_ladder_fits_a_failing_core_and_the_report_says_which_step_served(
    local_store: ObjectStore, uploads, judging_gate: QualityGate
) -> None:
    # A gate nothing compressed can pass (no loss of the adapter's effect allowed): every step is tried, in order.
    strict = dataclasses.replace(judging_gate, thresholds=GateThresholds(max_kl_lost=0.0))
    pipeline = Pipeline(local_store, CompressionPolicy(device="cpu", rank=2, min_basis_members=1), strict)
    user, files = next(iter(uploads.items()))
    job, _ = accept_upload(local_store, user, "default", files)
    report = pipeline.run_job(AdapterVersion.from_job_id(job.job_id)).report
    steps = [step.step for step in report.ladder]
    assert steps == ["projection", "fitted"], report.ladder
    fitted = report.ladder[1]
    assert fitted.kl[1] < fitted.kl[0] and fitted.fit_steps == 20
    assert report.served_by == "original" and report.served_from == ServedFrom.ORIGINAL
    assert report.gate.behaviour["self_text"]["positions"] > 0  # the last step's (the fitted core's) verdict
    assert any("loses" in reason for reason in report.gate.reasons)


def test_a_newcomer_waits_for_the_refit_on_a_basis_of_too_few_members(
    local_store: ObjectStore, uploads, judging_gate: QualityGate
) -> None:
    policy = CompressionPolicy(device="cpu", rank=32, min_basis_members=4, refit_after=3)
    pipeline = Pipeline(local_store, policy, judging_gate)
    reports = []
    for user, files in list(uploads.items())[:2]:
        job, _ = accept_upload(local_store, user, "default", files)
        reports.append(pipeline.run_job(AdapterVersion.from_job_id(job.job_id)).report)
    # The first member's basis is its own: judged, and exact at R = 32 for rank 8.
    assert reports[0].served_by == "projection", reports[0].ladder
    assert reports[0].served_from == ServedFrom.COMPRESSED
    # The second is not judged on a basis fitted on one user: served from its original until the refit.
    assert reports[1].served_by == "original" and reports[1].gate.behaviour is None
    assert [step.to_dict() for step in reports[1].ladder] == [
        {"step": "projection", "skipped": "the basis was fitted on 1 member(s) < 4: wait for the refit"}
    ]
