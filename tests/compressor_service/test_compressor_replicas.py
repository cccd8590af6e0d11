"""Two compressor replicas on one bucket (issue 15): uploads spread over both, for users of one cohort, with
every upload refitting the cohort. Afterwards every acknowledged upload is done, each user's pointer names their
newest version, everything a current version needs is in the bucket, and the cohort lists every member.

Before the replicas locked through the bucket (soppu.registry.leases) and switched pointers by compare-and-swap,
a review of this run lost cohort members, left a current core whose basis another replica had retired, and moved
a pointer from v2 back to v1."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from soppu.registry import Manifest, Pointer, ServedFrom
from soppu.registry.records import CohortState
from soppu.store.layout import AdapterVersion
from tests.compressor_service.compressor_client import (
    Compressor,
    StartCompressor,
    adapter_files,
    file_parts,
    upload,
    wait_for_job,
    wait_until_idle,
)

USERS = 6
JOB_TIMEOUT_S = 300.0  # every upload refits the cohort, on two busy processes


def _upload(replica: Compressor, user: str, directory: Path) -> dict[str, Any]:
    with replica.client() as client:
        response = upload(client, user, file_parts(adapter_files(directory)))
    assert response.status_code == 202, response.text
    return response.json()


def test_two_replicas_on_one_bucket_agree(start_compressor: StartCompressor, examples_dir: Path) -> None:
    examples = json.loads((examples_dir / "users.json").read_text())["users"]
    # Short leases, so nothing waits long on the other replica's; refits after every member on an original.
    replicas = [start_compressor(lease_ttl_s="5")[1], start_compressor(lease_ttl_s="5")[1]]
    adapters = [examples_dir / examples[i % len(examples)]["adapter"] for i in range(USERS)]
    users = [f"replica-{i}" for i in range(USERS)]
    # Every user's first version on one replica, at once; then the first two users' second version (another
    # user's adapter) on the other, while the first ones still run.
    with ThreadPoolExecutor(USERS) as pool:
        first = list(pool.map(lambda i: _upload(replicas[i % 2], users[i], adapters[i]), range(USERS)))
        second = list(pool.map(lambda i: _upload(replicas[(i + 1) % 2], users[i], adapters[i + 1]), range(2)))
    with replicas[0].client() as client:
        jobs = {job["job_id"]: wait_for_job(client, job["job_id"], JOB_TIMEOUT_S) for job in first + second}
    assert {job["state"] for job in jobs.values()} == {"done"}, jobs

    store = replicas[0].store
    newest = {users[i]: 2 if i < 2 else 1 for i in range(USERS)}
    cohorts = set()
    for user, version in newest.items():
        pointer = Pointer.from_json(store.get(AdapterVersion(user, "default", 1).pointer_key).data)
        assert pointer.version >= version, (user, pointer)  # never behind the newest upload (a refit adds more)
        manifest = Manifest.from_json(store.get(pointer.manifest_key).data)
        current = AdapterVersion(user, "default", pointer.version)
        assert all(store.exists(key) for key in current.export_keys()), user
        if manifest.served_from == ServedFrom.COMPRESSED:
            assert manifest.basis_key is not None and store.exists(manifest.basis_key), user  # its basis is kept
            assert store.exists(current.core_key), user
        cohorts.add(manifest.cohort)
    members: set[str] = set()
    for cohort in cohorts:
        state = CohortState.from_json(store.get(f"cohorts/{cohort}/state.json").data)
        members |= set(state.members)
    assert {f"{user}/default" for user in users} <= members  # no member lost
    assert not [info.key for info in store.list("leases/")]  # every lease released


def test_a_replica_killed_with_its_queue_full_leaves_its_jobs_to_the_other(
    start_compressor: StartCompressor, examples_dir: Path
) -> None:
    examples = json.loads((examples_dir / "users.json").read_text())["users"]
    # The first replica accepts and claims jobs but runs none (0 workers), so they sit in its queue when it dies.
    doomed, taker = start_compressor(lease_ttl_s="2", workers="0"), start_compressor(lease_ttl_s="2")
    users = [f"orphan-{i}" for i in range(3)]
    accepted = [_upload(doomed[1], user, examples_dir / examples[i]["adapter"]) for i, user in enumerate(users)]
    doomed[0].proc.kill()
    doomed[0].proc.wait()
    with taker[1].client() as client:
        jobs = [wait_for_job(client, job["job_id"], JOB_TIMEOUT_S) for job in accepted]
    assert [job["state"] for job in jobs] == ["done"] * len(users), jobs
    assert [job["attempts"] for job in jobs] == [1] * len(users)  # each claimed and run once
    for user in users:
        assert taker[1].store.exists(AdapterVersion(user, "default", 1).pointer_key)


def test_a_deletion_on_one_replica_holds_while_the_other_refits(
    start_compressor: StartCompressor, examples_dir: Path
) -> None:
    examples = json.loads((examples_dir / "users.json").read_text())["users"]
    replicas = [start_compressor(lease_ttl_s="5")[1], start_compressor(lease_ttl_s="5")[1]]
    users, gone = [f"stay-{i}" for i in range(3)], "leaving-9e2b"
    adapters = [examples_dir / examples[i % len(examples)]["adapter"] for i in range(len(users) + 2)]
    with ThreadPoolExecutor(4) as pool:
        first = list(pool.map(lambda i: _upload(replicas[i % 2], users[i], adapters[i]), range(len(users))))
        first.append(_upload(replicas[1], gone, adapters[len(users)]))
    with replicas[0].client() as client:
        cohorts = {wait_for_job(client, job["job_id"], JOB_TIMEOUT_S)["report"]["cohort"] for job in first}
    # The leaving user's data now helps fit the basis; then their deletion on one replica races new uploads (each
    # refitting the cohort) and explicit refits on the other.
    with replicas[0].client(timeout=300) as client:
        for cohort in cohorts:
            assert client.post(f"/v1/cohorts/{cohort}/refit").status_code == 200
    with ThreadPoolExecutor(4) as pool:
        later = [pool.submit(_upload, replicas[0], users[i], adapters[i + 1]) for i in range(2)]
        with replicas[0].client(timeout=300) as client:
            refits = [pool.submit(client.post, f"/v1/cohorts/{cohort}/refit") for cohort in cohorts]
            with replicas[1].client(timeout=300) as other:
                deleted = other.delete(f"/v1/users/{gone}")
            assert deleted.status_code == 200, deleted.text
            assert all(refit.result().status_code == 200 for refit in refits)
        with replicas[1].client() as client:
            assert [wait_for_job(client, f.result()["job_id"], JOB_TIMEOUT_S)["state"] for f in later] == ["done"] * 2
    wait_until_idle(replicas[0])
    store = replicas[0].store
    assert not [info.key for info in store.list("") if gone in info.key]
    for cohort in cohorts:
        state = CohortState.from_json(store.get(f"cohorts/{cohort}/state.json").data)
        held = set(state.members) | set(state.contributors) | {k for keys in state.stale_bases.values() for k in keys}
        assert not [key for key in held if key.startswith(f"{gone}/")], state
    for user in users:  # the others are still served, from objects that exist
        pointer = Pointer.from_json(store.get(AdapterVersion(user, "default", 1).pointer_key).data)
        manifest = Manifest.from_json(store.get(pointer.manifest_key).data)
        assert manifest.basis_key is None or store.exists(manifest.basis_key), user
    deadline = time.monotonic() + 60  # leases are released as each request ends
    while list(store.list("leases/")):
        assert time.monotonic() < deadline, "a lease was never released"
        time.sleep(0.1)
