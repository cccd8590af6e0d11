"""The replica drill's phases (``bench/replica_drill.py`` describes them): 1. setup, 2. per-user limits across
gateways, 3. chaos with the kills, 4. settle, 5. verdicts; each returns its part of the report.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from typing import Any

import httpx
from _drill_client import fetch
from _drill_topology import DrillError, DrillUser, base_url, kill
from _replica_clients import ReplicaClients, sha256_hex

from soppu.registry import JobState
from soppu.registry.catalog import pending_jobs, read_pointer
from soppu.store.layout import AdapterVersion

__all__ = ["Drill"]


class Drill(ReplicaClients):
    """The drill's phases, run in order by ``replica_drill.run``."""

    # ---- 1. setup

    def setup(self) -> dict[str, Any]:
        rng, started = random.Random(self.sizes.seed), time.monotonic()
        names = [f"user-{n:02d}" for n in range(self.sizes.users)] + ["limit-user"]
        for n, name in enumerate(names):
            _, response = self._compressor(rng, "POST", f"/v1/users/{name}/keys", first=n % 2)
            if response.status_code != 201:
                raise DrillError(f"no key for {name}: {response.status_code} {response.text[:300]}")
            user = DrillUser(name, response.json()["key"], self.prompts[n % len(self.prompts)])
            self.users.append(user)
        self.limit_user = self.users.pop()
        _, response = self._compressor(rng, "POST", "/v1/keys", json={"role": "service"})
        if response.status_code != 201:
            raise DrillError(f"no service key: {response.status_code} {response.text[:300]}")
        self.service_key = response.json()["key"]
        uploads = [self.upload(rng, name, first=n % 2) for n, name in enumerate(names)]
        store, deadline = self._store(), time.monotonic() + self.sizes.settle_timeout_s
        while any((job := self.job(store, u.job_id)) is None or job.state != JobState.DONE for u in uploads):
            if time.monotonic() > deadline:
                raise DrillError("the version 1 uploads were not done in time")
            time.sleep(0.2)
        with httpx.Client(timeout=self.sizes.hang_s, trust_env=False) as client:
            for user in [*self.users, self.limit_user]:
                for n in range(len(self.top.gateways)):
                    answer, _ = self.generate(client, rng, user, gateways=[n])
                    if answer.end != "answered":
                        raise DrillError(f"{user.user_id} not served through gateway-{n}: {answer.detail}")
        self.doomed = random.Random(self.sizes.seed + 1).sample([u.user_id for u in self.users], self.sizes.deletions)
        return {"users": len(names), "uploads": len(uploads), "setup_s": round(time.monotonic() - started, 1)}

    # ---- 2. per-user limits across gateways

    def limits(self) -> dict[str, Any]:
        assert self.limit_user is not None
        rng, outcomes = random.Random(self.sizes.seed + 2), collections.Counter[str]()
        sent = 3 * self.sizes.burst
        with httpx.Client(timeout=self.sizes.hang_s, trust_env=False) as client:
            started = time.monotonic()
            for n in range(sent):
                answer, _ = self.generate(client, rng, self.limit_user, gateways=[n % 2])
                outcomes["admitted" if answer.end == "answered" else answer.detail] += 1
            elapsed = time.monotonic() - started
        bound = self.sizes.burst + self.sizes.rate * elapsed
        modes = []
        for gateway in self.top.gateways:
            modes.append(httpx.get(base_url(gateway) + "/readyz", timeout=10, trust_env=False).json().get("limits"))
        return {
            "sent": sent,
            "admitted": outcomes.pop("admitted", 0),
            "refused": dict(outcomes),  # http_429:rate_limited is 429 with error_type rate_limited
            "elapsed_s": round(elapsed, 3),
            "bound": round(bound, 2),
            "limit_excess": max(0, (sent - sum(outcomes.values())) - int(bound)),
            "gateway_limits": modes,  # "shared" (Redis) or "local" (after a Redis error)
        }

    # ---- 3. chaos

    def _thread(self, name: str, target: Any, *args: Any) -> threading.Thread:
        def run() -> None:
            try:
                target(*args)
            except Exception as e:  # a DrillError, or a bug: the drill fails with it, never silently
                with self.seen.lock:
                    self.seen.errors.append(f"{name}: {e!r}"[:1000])
                self.stop.set()

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread

    def _uploader(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            self.upload(rng, rng.choice([u.user_id for u in self.users if u.user_id not in self.doomed]))
            self.stop.wait(self.sizes.upload_gap_s)

    def _deleter(self, seed: int, started: float) -> None:
        rng = random.Random(seed)
        for k, user in enumerate(self.doomed):  # between 20 % and 60 % of the phase: around the kills
            at = started + self.sizes.chaos_s * (0.2 + 0.4 * (k + 0.5) / len(self.doomed))
            if self.stop.wait(max(0.0, at - time.monotonic())):
                return
            self.upload(rng, user)  # its job then races the deletion
            time.sleep(rng.uniform(0.05, 0.5))
            with self.seen.lock:
                self.seen.deleting.add(user)
            sent = time.monotonic()
            _, response = self._compressor(rng, "DELETE", f"/v1/users/{user}")
            if response.status_code != 200:
                raise DrillError(f"deleting {user}: {response.status_code} {response.text[:300]}")
            with self.seen.lock:
                self.seen.deletions[user] = time.monotonic()
                self.seen.deletion_s.append(round(self.seen.deletions[user] - sent, 2))

    def _refitter(self, seed: int) -> None:
        rng, store = random.Random(seed), self._store()
        while not self.stop.wait(self.sizes.refit_every_s):
            cohorts = sorted({info.key.split("/")[1] for info in store.list("cohorts/")})
            if not cohorts:
                continue
            _, response = self._compressor(rng, "POST", f"/v1/cohorts/{rng.choice(cohorts)}/refit")
            with self.seen.lock:
                self.seen.refits[str(response.status_code)] += 1

    def _load(self, seed: int) -> None:
        rng, seen = random.Random(seed), self.seen
        with httpx.Client(timeout=self.sizes.hang_s, trust_env=False) as client:
            while not self.stop.wait(self.sizes.load_pause_s):
                with seen.lock:
                    deleted, deleting = list(seen.deletions.items()), set(seen.deleting)
                if deleted and rng.random() < self.sizes.deleted_share:
                    user_id, acked = rng.choice(deleted)
                    probe = DrillUser(user_id, self.service_key, self.users[0].prompts)
                    sent = time.monotonic()
                    answer, gateway = self.generate(client, rng, probe, name_user=True)
                    with seen.lock:
                        if answer.end == "answered":
                            seen.deleted_served.append({"user": user_id, "gateway": gateway,
                                                        "sent_after_ack_s": round(sent - acked, 3)})  # fmt: skip
                        else:
                            seen.deleted_probes[answer.detail] += 1
                    continue
                user = rng.choice([u for u in self.users if u.user_id not in deleting])
                answer, _ = self.generate(client, rng, user)
                with seen.lock:
                    if user.user_id in seen.deleting:  # its deletion began meanwhile: no verdict
                        seen.generations["while_deleting"] += 1
                    elif answer.end == "answered":
                        seen.generations["ok"] += 1
                    elif answer.detail.startswith(("http_429", "http_503")):
                        seen.generations["refused"] += 1
                        seen.failed_kinds[answer.detail] += 1
                    else:
                        seen.generations["failed"] += 1
                        seen.failed_kinds[answer.detail] += 1

    def _poller(self, last: dict[str, int | None]) -> None:
        store = self._store()
        while not self.stop.is_set():
            self.poll(store, last)
            self.stop.wait(0.1)

    def chaos(self) -> dict[str, Any]:
        rng, seed, store = random.Random(self.sizes.seed + 3), self.sizes.seed + 10, self._store()
        started = time.monotonic()
        threads = [
            self._thread("uploader", self._uploader, seed),
            self._thread("deleter", self._deleter, seed + 1, started),
            self._thread("refitter", self._refitter, seed + 2),
            self._thread("poller", self._poller, self.last),
            *(self._thread(f"load-{n}", self._load, seed + 3 + n) for n in range(self.sizes.load_workers)),
        ]
        self.stop.wait(self.sizes.chaos_s * self.sizes.kill_share)
        self.victims = victims = {kind: rng.randrange(2) for kind in ("compressor", "gateway", "engine")}
        staying = [u.user_id for u in self.users if u.user_id not in self.doomed]
        for user in rng.sample(staying, min(self.sizes.queued_at_kill, len(staying))):
            self.upload(rng, user, first=victims["compressor"])
        killed_at = time.monotonic()
        kill(self.top.compressors[victims["compressor"]])
        kill(self.top.gateways[victims["gateway"]])
        kill(self.top.engines[victims["engine"]])
        with self.seen.lock:
            theirs = [u.job_id for u in self.seen.uploads if u.compressor == victims["compressor"]]
        self.pending_at_kill = [job_id for job_id in theirs if (job := self.job(store, job_id)) is not None
                   and job.state in (JobState.QUEUED, JobState.RUNNING)]  # fmt: skip
        self.stop.wait(max(0.0, started + self.sizes.chaos_s - time.monotonic()))
        threads[1].join(self.sizes.hang_s * 2)  # the deleter: deleted users are asked for after it, too
        self.stop.wait(self.sizes.after_deletions_s)
        self.stop.set()
        for thread in threads:
            thread.join(self.sizes.hang_s * 2)
        if stuck := [t.name for t in threads if t.is_alive()]:
            raise DrillError(f"threads still running after the chaos phase: {stuck}")
        if self.seen.errors:
            raise DrillError("; ".join(self.seen.errors))
        return {
            "chaos_s": round(time.monotonic() - started, 1),
            "killed_at_s": round(killed_at - started, 1),
            "kills": {kind: f"{kind}-{n}" for kind, n in victims.items()},
            "uploads_acked": len(self.seen.uploads),
            "deletions": len(self.seen.deletions),
            "deletion_s": self.seen.deletion_s,
            "refits": dict(self.seen.refits),
            "generations": dict(self.seen.generations),
            "generation_failures": dict(self.seen.failed_kinds),
            "deleted_user_probes": dict(self.seen.deleted_probes),
            "failovers": dict(self.seen.failovers),
            "pointer_changes_seen": sum(len(seq) for seq in self.seen.pointers.values()),
            "pointer_reads_failed": self.seen.poll_errors,
        }

    # ---- 4. settle

    def settle(self) -> float:
        store, started = self._store(), time.monotonic()
        job_ids = [u.job_id for u in self.seen.uploads]
        while True:
            open_jobs = [j for j in job_ids if (job := self.job(store, j)) is not None
                         and job.state in (JobState.QUEUED, JobState.RUNNING)]  # fmt: skip
            if not open_jobs and not pending_jobs(store):
                self.poll(store, self.last)  # the settled pointers, judged with the rest
                return round(time.monotonic() - started, 1)
            if time.monotonic() - started > self.sizes.settle_timeout_s:
                raise DrillError(f"jobs still pending after {self.sizes.settle_timeout_s:.0f} s: {open_jobs[:5]}")
            time.sleep(0.5)

    # ---- 5. verdicts

    def verdicts(self) -> dict[str, Any]:
        store, seen = self._store(), self.seen
        deleted = set(seen.deletions)
        lost: list[dict[str, Any]] = []
        ends: collections.Counter[str] = collections.Counter()
        for upload in seen.uploads:
            if upload.user in deleted:
                ends["deleted_users"] += 1
                continue
            job = self.job(store, upload.job_id)
            if job is not None and job.state == JobState.DONE:
                ends["done"] += 1
            elif job is not None and job.state == JobState.FAILED and (job.error or {}).get("code"):
                ends[f"failed:{job.error['code']}"] += 1  # type: ignore[index]
            else:
                lost.append({"job": upload.job_id, "state": None if job is None else job.state,
                             "error": None if job is None else job.error})  # fmt: skip
        regressions, resurrected = [], []
        for user, seq in seen.pointers.items():
            high = 0
            for at, version in seq:  # a surviving user's pointer gone counts too
                if (version is not None and version < high) or (version is None and high and user not in deleted):
                    regressions.append({"user": user, "from": high, "to": version})
                high = max(high, version or 0)
                if version is not None and user in deleted and at > seen.deletions[user]:
                    resurrected.append({"user": user, "version": version})
        reclaimed = [j for j in self.pending_at_kill if (job := self.job(store, j)) is None
                     or job.state in (JobState.DONE, JobState.FAILED)]  # fmt: skip
        survivor = base_url(self.top.gateways[1 - self.victims["gateway"]])
        behind, unserved, served_deleted = [], [], list(seen.deleted_served)
        rng = random.Random(self.sizes.seed + 4)
        with httpx.Client(timeout=self.sizes.hang_s, trust_env=False) as client:
            for user in self.users:
                if user.user_id in deleted:
                    probe = DrillUser(user.user_id, self.service_key, user.prompts)
                    answer = fetch(client, survivor, probe, user.prompts[0], stream=False, name_user=True)
                    if answer.end == "answered":
                        served_deleted.append({"user": user.user_id, "after_settling": True})
                    continue
                done = [u for u in seen.uploads if u.user == user.user_id
                        and (job := self.job(store, u.job_id)) is not None and job.state == JobState.DONE]  # fmt: skip
                newest = max(done, key=lambda u: u.version, default=None)
                pointer = read_pointer(store, user.user_id, "default")
                if newest is not None and (pointer is None or pointer.version < newest.version):
                    behind.append({"user": user.user_id, "pointer": pointer and pointer.version,
                                   "newest_upload": newest.version})  # fmt: skip
                elif newest is not None and pointer is not None:
                    weights = AdapterVersion(user.user_id, "default", pointer.version).original_keys()[1]
                    if sha256_hex(store.get(weights).data) != newest.weights_sha256:
                        behind.append({"user": user.user_id, "pointer": pointer.version, "other_bytes_than":
                                       newest.version})  # fmt: skip
                for tries in range(20):  # a clean refusal (an engine just found dead, say) is tried again
                    answer, _ = self.generate(client, rng, user, gateways=[1 - self.victims["gateway"]])
                    if answer.end == "answered" or not answer.detail.startswith(("http_429", "http_503")):
                        break
                    time.sleep(0.1 * (tries + 1))
                if answer.end != "answered":
                    unserved.append({"user": user.user_id, "detail": answer.detail})
        return {
            "lost": len(lost),
            "lost_examples": lost[:5],
            "regressions": len(regressions),
            "regression_examples": regressions[:5],
            "deleted_served": len(served_deleted),
            "deleted_served_examples": served_deleted[:5],
            "resurrected": len(resurrected),
            "resurrected_examples": resurrected[:5],
            "behind": behind,
            "unserved": unserved,
            "uploads_by_end": dict(ends),
            "reclaim": {
                "dead_compressors_jobs_pending_at_kill": len(self.pending_at_kill),
                "finished_after": len(reclaimed),
            },
        }
