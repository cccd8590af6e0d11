"""Replica drill on real processes, no mocks: two compressors on one bucket, two gateways sharing per-user limits
and invalidations through one Redis, two engines; one of each killed with SIGKILL in the middle of uploads,
deletions, refits and generation load. ``tests/e2e/test_replica_drill.py`` runs it in quick sizes.

Topology (loopback): moto's S3 server (or a given endpoint), a fresh bucket, one ``redis-server``; two compressors
(short leases, so a dead one's job claims expire in seconds; the error gate alone, ``base_model=none``, as
``kill_drill.py``: the drill is about processes, not quality), both told both gateways and the Redis; two
gateways (``bench/drills.py``'s example engines behind both, per-user request limits on); two engines.

1. Keys for every user (admin, through a compressor); version 1 uploads spread over both compressors, waited
   for; every user answers 200 through both gateways.
2. Per-user limits across gateways: one user sends ``3 x burst`` requests, alternating gateways, back to back.
   Admitted must be at most ``burst + rate x elapsed``.
3. Chaos for ``--chaos-s``: new versions (another example adapter) uploaded through a random compressor (a client
   whose compressor is gone retries on the other with the same Idempotency-Key); users deleted (each after one
   more upload, which the deletion then races); explicit cohort refits; generation load through a random gateway
   (retried on the other on a connection error), deleted users asked for with a service key naming them; a poller
   reading every pointer. At a third of it a few uploads go to one compressor, which is then killed (SIGKILL)
   with jobs in its queue, with one gateway and one engine. The load goes on a while after the last deletion.
4. Settle: no job pending (the survivor claims the dead compressor's jobs once their claims expire).
5. Verdicts, each must be 0 (or empty):
   lost            acknowledged uploads neither done, failed with an error code, nor a deleted user's
   regressions     a pointer seen moving to a lower version (or vanishing, but for a deleted user)
   deleted_served  a 200 for a deleted user to a request sent after the deletion was acknowledged (in the chaos,
                   through either gateway; after settling, through the surviving one)
   resurrected     a deleted user's pointer read after the deletion was acknowledged
   behind          a surviving user whose pointer is below their newest acknowledged upload, or names other bytes
   unserved        a surviving user the surviving gateway does not answer 200 after settling
   limit_excess    step 2's admitted beyond its bound
   Counts and timings are reported, never judged.

    python bench/replica_drill.py            # full size
    python bench/replica_drill.py --quick    # the test suite's sizes

One JSON object on stdout (a summary on stderr); the exit status is 1 when a verdict fails (listed in ``failed``).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import random
import secrets
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drills import DrillError, DrillUser, Topology, base_url, build_drill_examples, fetch, kill

from soppu.adapter import CONFIG_NAME, WEIGHTS_NAME
from soppu.cli.stack import Service, free_port
from soppu.errors import ObjectNotFound
from soppu.registry import JobRecord, JobState
from soppu.registry.catalog import pending_jobs, read_pointer
from soppu.store import S3Store
from soppu.store.layout import AdapterVersion

__all__ = ["FULL", "QUICK", "ReplicaTopology", "Sizes", "failures", "run"]

_START_S = 180.0  # torch imported by four processes at once on two busy cores


@dataclass(frozen=True)
class Sizes:
    users: int = 10  # drill users (the limit's user is one more), each on one of the example adapters
    chaos_s: float = 30.0
    deletions: int = 3
    after_deletions_s: float = 2.0  # the load goes on at least this long after the last deletion's acknowledgement
    load_workers: int = 3
    load_pause_s: float = 0.1  # each load worker's pause between requests: a user's share stays under the limit
    upload_gap_s: float = 0.4  # the uploader's pause between uploads
    queued_at_kill: int = 4  # uploads sent to the doomed compressor just before the kill: its queue is not empty
    refit_every_s: float = 5.0
    kill_share: float = 1 / 3  # the kills land this far into the chaos phase
    deleted_share: float = 0.25  # of the load's requests, for a deleted user (once there is one)
    burst: int = 20  # SOPPU_GATEWAY_USER_REQUEST_BURST; the drill's normal traffic per user stays well under
    rate: float = 10.0  # SOPPU_GATEWAY_USER_REQUESTS_PER_S
    hang_s: float = 60.0  # the clients' read timeout
    settle_timeout_s: float = 600.0  # hang guard on settling
    seed: int = 0


FULL = Sizes()
QUICK = Sizes(users=4, chaos_s=10.0, deletions=1, load_workers=2, upload_gap_s=0.5, queued_at_kill=3,
              refit_every_s=4.0)  # fmt: skip


class ReplicaTopology(Topology):
    """``Topology``'s store and engines, plus a redis-server, two compressors and two gateways."""

    def __init__(self, examples: Path, workdir: Path, sizes: Sizes, s3_endpoint: str | None = None) -> None:
        super().__init__(examples, workdir, s3_endpoint, engines=2)
        self.sizes = sizes
        self.admin_key = secrets.token_urlsafe(24)
        self.compressors: list[Service] = []
        self.gateways: list[Service] = []
        self.store: S3Store | None = None
        self.redis_url = ""

    def _start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise DrillError("redis-server is not installed (`make system-deps`)")
        port = free_port()
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self._service("redis", command, self.redis_url, {})  # its health is a PING, below
        deadline = time.monotonic() + 30
        with redis.Redis.from_url(self.redis_url, socket_timeout=2) as probe:
            while True:
                try:
                    probe.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise DrillError("redis-server did not answer PING within 30 s") from None
                    time.sleep(0.05)

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.store = store = self.start_store()
        self._start_redis()
        shared = {**self.store_env(store), "SOPPU_ADMIN_KEY": self.admin_key}
        self.start_engines(self.store_env(store))
        gateway_ports = [free_port() for _ in range(2)]
        compressor_env = {
            **shared,
            "SOPPU_COMPRESSOR_DEVICE": "cpu",
            "SOPPU_COMPRESSOR_TORCH_THREADS": "1",
            "SOPPU_COMPRESSOR_BASE_MODEL": "none",
            "SOPPU_COMPRESSOR_LEASE_TTL_S": "2",  # a dead replica's claims expire in 2 s
            "SOPPU_COMPRESSOR_REDIS_URL": self.redis_url,
            "SOPPU_COMPRESSOR_GATEWAY_URLS": json.dumps([f"http://127.0.0.1:{p}" for p in gateway_ports]),
        }
        for n in range(2):
            port = free_port()
            command = [sys.executable, "-m", "compressor_service", "--port", str(port), "--log-level", "warning"]
            self.compressors.append(
                self._service(f"compressor-{n}", command, f"http://127.0.0.1:{port}/readyz", compressor_env)
            )
        for service in self.engines + self.compressors:
            service.wait_healthy(_START_S)
        gateway_env = {
            **shared,
            "SOPPU_GATEWAY_BACKENDS": json.dumps(self.backends()),
            "SOPPU_GATEWAY_HEALTH_INTERVAL_S": "0.5",
            "SOPPU_GATEWAY_REDIS_URL": self.redis_url,
            # 0.1 s by default: on two busy cores a slow answer would count as an outage, and limits turn local.
            "SOPPU_GATEWAY_REDIS_TIMEOUT_S": "0.5",
            "SOPPU_GATEWAY_USER_REQUESTS_PER_S": str(self.sizes.rate),
            "SOPPU_GATEWAY_USER_REQUEST_BURST": str(self.sizes.burst),
        }
        for n, port in enumerate(gateway_ports):
            self.gateways.append(self.start_gateway(f"gateway-{n}", port, gateway_env))
        for gateway in self.gateways:
            gateway.wait_healthy(_START_S)


# ---- what the drill saw ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    job_id: str
    user: str
    version: int
    weights_sha256: str
    compressor: int  # the replica that acknowledged it


@dataclass
class Seen:
    """Everything the drill's threads saw; guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    uploads: list[Upload] = field(default_factory=list)
    deleting: set[str] = field(default_factory=set)  # deletions sent
    deletions: dict[str, float] = field(default_factory=dict)  # user -> when its deletion was acknowledged
    deletion_s: list[float] = field(default_factory=list)  # from sending each deletion to its acknowledgement
    refits: collections.Counter[str] = field(default_factory=collections.Counter)
    generations: collections.Counter[str] = field(default_factory=collections.Counter)
    failed_kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    deleted_probes: collections.Counter[str] = field(default_factory=collections.Counter)
    deleted_served: list[dict[str, Any]] = field(default_factory=list)
    failovers: collections.Counter[str] = field(default_factory=collections.Counter)
    pointers: dict[str, list[tuple[float, int | None]]] = field(default_factory=lambda: collections.defaultdict(list))
    poll_errors: int = 0
    errors: list[str] = field(default_factory=list)  # a thread's DrillError


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- the drill ------------------------------------------------------------------------------------------------


class Drill:
    def __init__(self, top: ReplicaTopology, sizes: Sizes) -> None:
        self.top, self.sizes, self.seen = top, sizes, Seen()
        examples = json.loads((top.examples / "users.json").read_text())["users"]
        self.adapters = [{n: (top.examples / u["adapter"] / n).read_bytes() for n in (CONFIG_NAME, WEIGHTS_NAME)}
                         for u in examples]  # fmt: skip
        self.prompts = [[p["prompt"] for p in u["prompts"]] for u in examples]
        self.users: list[DrillUser] = []  # the drill's users; the limit's user apart
        self.limit_user: DrillUser | None = None
        self.service_key = ""
        self.doomed: list[str] = []
        self.stop = threading.Event()
        self._counts: collections.Counter[str] = collections.Counter()  # uploads per user, for the next adapter
        self.victims: dict[str, int] = {}  # kind -> which one was killed
        self.pending_at_kill: list[str] = []  # jobs the killed compressor acknowledged, pending at the kill
        self.last: dict[str, int | None] = {}  # each user's pointer version as the poller last read it

    # ---- clients

    def _store(self) -> S3Store:  # one per thread
        assert self.top.store is not None
        return S3Store(self.top.store.bucket, endpoint_url=self.top.s3_endpoint, access_key="testing",
                       secret_key="testing", region="us-east-1")  # fmt: skip

    def _client(self) -> httpx.Client:
        return httpx.Client(timeout=httpx.Timeout(self.sizes.hang_s, connect=5.0), trust_env=False,
                            headers={"Authorization": f"Bearer {self.top.admin_key}"})  # fmt: skip

    def _compressor(self, rng: random.Random, method: str, path: str, *, first: int | None = None,
                    **kwargs: Any) -> tuple[int, httpx.Response]:  # fmt: skip
        """(which replica, its answer) for a request to a random compressor, sent to the other on a connection
        error, as a client would, until one answers."""
        n = rng.randrange(2) if first is None else first
        deadline = time.monotonic() + self.sizes.hang_s
        with self._client() as client:
            while True:
                try:
                    return n, client.request(method, base_url(self.top.compressors[n]) + path, **kwargs)
                except httpx.TransportError as e:
                    if time.monotonic() > deadline:
                        raise DrillError(f"{method} {path}: no compressor answered ({e!r})") from e
                    with self.seen.lock:
                        self.seen.failovers["compressor"] += 1
                    n = 1 - n
                    time.sleep(0.1)

    def upload(self, rng: random.Random, user: str, first: int | None = None) -> Upload:
        """A new version of ``user``'s adapter (another example adapter than their last), acknowledged."""
        index = next(i for i, u in enumerate([*self.users, self.limit_user]) if u and u.user_id == user)
        with self.seen.lock:
            files = self.adapters[(index + self._counts[user]) % len(self.adapters)]
            self._counts[user] += 1
        parts = {name: (name, data) for name, data in files.items()}
        headers = {"Idempotency-Key": uuid.uuid4().hex}  # a retry on the other replica is the same upload
        deadline = time.monotonic() + self.sizes.hang_s
        while True:
            n, response = self._compressor(rng, "POST", f"/v1/users/{user}/adapters", first=first, files=parts,
                                           headers=headers)  # fmt: skip
            if response.status_code == 202:
                break
            if response.status_code != 503 or time.monotonic() > deadline:
                raise DrillError(f"upload for {user}: {response.status_code} {response.text[:300]}")
            time.sleep(float(response.headers.get("retry-after", 1)))
        body = response.json()
        done = Upload(body["job_id"], user, body["version"], _sha(files[WEIGHTS_NAME]), n)
        with self.seen.lock:
            self.seen.uploads.append(done)
        return done

    def generate(self, client: httpx.Client, rng: random.Random, user: DrillUser, *, name_user: bool = False,
                 gateways: list[int] | None = None) -> tuple[Any, int]:  # fmt: skip
        """(how it ended, the gateway that answered) for a short request through a random gateway, sent to the
        other on a connection error."""
        order = gateways if gateways is not None else rng.sample(range(len(self.top.gateways)), 2)
        for n in order:
            answer = fetch(client, base_url(self.top.gateways[n]), user, rng.choice(user.prompts), stream=False,
                           connection_errors_clean=True, name_user=name_user)  # fmt: skip
            if not answer.detail.startswith("connection:"):
                return answer, n
            with self.seen.lock:
                self.seen.failovers["gateway"] += 1
        return answer, order[-1]

    def job(self, store: S3Store, job_id: str) -> JobRecord | None:
        try:
            return JobRecord.from_json(store.get(AdapterVersion.from_job_id(job_id).job_key).data)
        except ObjectNotFound:
            return None

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

    def poll(self, store: S3Store, last: dict[str, int | None]) -> None:
        """Every user's pointer, read once; a change is recorded with when its read began."""
        for user in [u.user_id for u in self.users]:
            at = time.monotonic()
            try:
                pointer = read_pointer(store, user, "default")
            except Exception:  # a store error under load: no observation
                with self.seen.lock:
                    self.seen.poll_errors += 1
                continue
            version = None if pointer is None else pointer.version
            if user not in last or last[user] != version:
                last[user] = version
                with self.seen.lock:
                    self.seen.pointers[user].append((at, version))

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
                    if _sha(store.get(weights).data) != newest.weights_sha256:
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


# ---- the run and its report -----------------------------------------------------------------------------------


def run(examples: Path, workdir: Path, sizes: Sizes, s3_endpoint: str | None = None) -> dict[str, Any]:
    """The whole drill on a fresh topology: the report, without the machine (see ``failures``)."""
    report: dict[str, Any] = {}
    with ReplicaTopology(examples, workdir, sizes, s3_endpoint) as top:
        drill = Drill(top, sizes)
        try:
            report["setup"] = drill.setup()
            report["limit"] = drill.limits()
            report["chaos"] = drill.chaos()
            report["settle_s"] = drill.settle()
            report["verdicts"] = drill.verdicts()
        except (DrillError, RuntimeError, httpx.HTTPError) as e:
            report["error"] = str(e)[-3000:]
        if failures(report):
            report["log_tails"] = top.log_tails()
    return report


def failures(report: dict[str, Any]) -> list[str]:
    """The verdicts a report fails (empty: it passed)."""
    if "error" in report:
        return [f"drill error: {report['error']}"]
    found, v = [], report["verdicts"]
    for name in ("lost", "regressions", "deleted_served", "resurrected"):
        if v[name]:
            found.append(f"{name}: {v[name]}, e.g. {v[name + '_examples'][:2]}")
    for name in ("behind", "unserved"):
        if v[name]:
            found.append(f"{name}: {v[name][:3]}")
    if report["limit"]["limit_excess"]:
        found.append(f"limit_excess: {report['limit']}")
    return found


def _summary(report: dict[str, Any]) -> str:
    if "verdicts" not in report:
        return f"replica drill: FAILED {report['failed']}"
    c, v, limit = report["chaos"], report["verdicts"], report["limit"]
    return (
        f"replica drill: {'ok' if report['ok'] else 'FAILED'} in {report['wall_s']} s\n"
        f"  chaos {c['chaos_s']} s, killed {', '.join(c['kills'].values())} at {c['killed_at_s']} s: "
        f"{c['uploads_acked']} uploads, {c['deletions']} deletions, refits {c['refits']}, generations "
        f"{c['generations']}, deleted users asked {sum(c['deleted_user_probes'].values())} times\n"
        f"  settled in {report['settle_s']} s; the dead compressor's pending jobs: "
        f"{v['reclaim']['finished_after']} of {v['reclaim']['dead_compressors_jobs_pending_at_kill']} ended\n"
        f"  lost {v['lost']}, regressions {v['regressions']}, deleted served {v['deleted_served']}, resurrected "
        f"{v['resurrected']}, behind {len(v['behind'])}, unserved {len(v['unserved'])}; limit: "
        f"{limit['admitted']} of {limit['sent']} admitted (bound {limit['bound']}), excess {limit['limit_excess']}"
        + "".join(f"\n  FAILED {f}" for f in report["failed"])
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the test suite's sizes")
    parser.add_argument("--users", type=int, help=f"drill users (default {FULL.users}; quick {QUICK.users})")
    parser.add_argument("--chaos-s", type=float, help=f"the chaos phase (default {FULL.chaos_s:g} s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chosen = {"users": args.users, "chaos_s": args.chaos_s}
    sizes = dataclasses.replace(QUICK if args.quick else FULL, seed=args.seed,
                                **{k: v for k, v in chosen.items() if v is not None})  # fmt: skip
    if not 0 < sizes.deletions < sizes.users:
        parser.error(f"--users must be more than {sizes.deletions} (the users deleted)")
    started = time.perf_counter()
    from _timing import machine  # torch is imported here only: --help stays fast

    report: dict[str, Any] = {"benchmark": "replica_drill", "machine": machine(), "config": dataclasses.asdict(sizes)}
    with tempfile.TemporaryDirectory(prefix="replica-drill-") as tmp:
        examples = build_drill_examples(4, Path(tmp) / "examples")
        report.update(run(examples, Path(tmp), sizes))
    failed = failures(report)
    tails = report.pop("log_tails", None)
    report["notes"] = {
        "lost": "acknowledged uploads neither done, failed with an error code, nor a deleted user's; must be 0",
        "regressions": "a pointer seen moving to a lower version; must be 0",
        "deleted_served": "200s for a deleted user to requests sent after the deletion was acknowledged; must be 0",
        "limit_excess": "admitted beyond burst + rate x elapsed, one user alternating both gateways; must be 0",
        "reclaim": "the killed compressor's acknowledged jobs still pending at the kill, and how many then ended",
    }
    report.update({"failed": failed, "ok": not failed, "wall_s": round(time.perf_counter() - started, 1)})
    if tails:
        print(tails, file=sys.stderr)
    print(_summary(report), file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
