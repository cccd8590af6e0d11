"""What the replica drill saw and how it talks to the services (``bench/replica_drill.py``): ``Seen`` gathers every
thread's observations; ``ReplicaClients`` holds the drill's users and state and its clients: an upload or a
request to a random compressor that fails over to the other, a generation through a random gateway, a job's
record and every user's pointer read from the store. ``_replica_phases.Drill`` adds the drill's phases.
"""

from __future__ import annotations

import collections
import hashlib
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from _drill_client import fetch
from _drill_topology import DrillError, DrillUser, base_url
from _replica_topology import ReplicaTopology, Sizes

from soppu.adapter import CONFIG_NAME, WEIGHTS_NAME
from soppu.errors import ObjectNotFound
from soppu.registry import JobRecord
from soppu.registry.catalog import read_pointer
from soppu.store import S3Store
from soppu.store.layout import AdapterVersion

__all__ = ["ReplicaClients", "Seen", "Upload", "sha256_hex"]


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


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ReplicaClients:
    """The drill's users and state, and its clients; one per drill (see ``_replica_phases.Drill``)."""

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
        done = Upload(body["job_id"], user, body["version"], sha256_hex(files[WEIGHTS_NAME]), n)
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
