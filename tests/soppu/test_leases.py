"""Leases (soppu.registry.leases): locks that hold across replica processes on one store, on both backends, that
outlive a holder killed with -9 only until they expire, and that a live holder keeps by renewing them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from soppu.registry.leases import Leases
from soppu.store import LocalStore, ObjectStore, S3Store
from soppu.store.layout import LEASES
from tests.support.processes import MOTO_ENV

# A replica's critical section: read a counter and write it plus one, unconditionally, under the lease; with
# the lease as a per-process lock only, two replicas would interleave and lose increments.
_WORKER = """
import sys
from soppu.errors import ObjectNotFound
from soppu.registry.leases import Leases
from soppu.store import open_store
store = open_store(sys.argv[1])
leases = Leases(store, ttl_s=10)
for _ in range(int(sys.argv[2])):
    with leases.hold("cohort:shared"):
        try:
            value = int(store.get("counter").data)
        except ObjectNotFound:
            value = 0
        store.put("counter", str(value + 1).encode())
"""

# Takes the lease, says so, and holds it until killed.
_HOLDER = """
import pathlib, sys, time
from soppu.registry.leases import Leases
from soppu.store import open_store
with Leases(open_store(sys.argv[1]), ttl_s=float(sys.argv[3])).hold("user:alice"):
    pathlib.Path(sys.argv[2]).touch()
    time.sleep(3600)
"""


def _url_env(store: ObjectStore, request: pytest.FixtureRequest) -> tuple[str, dict[str, str]]:
    if isinstance(store, S3Store):
        return f"s3://{store.bucket}", {"S3_ENDPOINT_URL": request.getfixturevalue("moto_server"), **MOTO_ENV}
    assert isinstance(store, LocalStore)
    return str(store.root), {}


def test_a_lease_excludes_replica_processes(store: ObjectStore, request: pytest.FixtureRequest) -> None:
    url, env = _url_env(store, request)
    writers, each = 3, 15
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, url, str(each)], env={**os.environ, **env})
        for _ in range(writers)
    ]
    assert [proc.wait(timeout=300) for proc in procs] == [0] * writers
    assert int(store.get("counter").data) == writers * each
    assert not list(store.list(f"{LEASES}/"))  # every lease released


def _in_thread(fn: object) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread


def test_a_holder_killed_with_minus_9_holds_its_lease_only_until_it_expires(tmp_path: Path) -> None:
    store, held = LocalStore(tmp_path / "store"), tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(store.root), str(held), "1.0"])
    try:
        while not held.exists() and holder.poll() is None:
            time.sleep(0.01)
        assert holder.poll() is None, "the holder did not start"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    acquired = threading.Event()

    def take() -> None:
        with Leases(store, ttl_s=1.0).hold("user:alice"):
            acquired.set()

    thread = _in_thread(take)
    thread.join(timeout=60)  # a guard against a hang, not a speed check
    assert acquired.is_set(), "the lease of a killed holder was never taken over"


def test_a_live_holder_keeps_its_lease_past_its_time_to_live(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    first, second = Leases(store, ttl_s=0.3), Leases(store, ttl_s=0.3)  # two replicas
    events: list[str] = []
    inside = threading.Event()

    def hold_long() -> None:
        with first.hold("cohort:c"):
            inside.set()
            time.sleep(1.5)  # five times the time to live: only renewals keep it
            events.append("first released")

    def wait_turn() -> None:
        inside.wait()
        with second.hold("cohort:c"):
            events.append("second acquired")

    threads = [_in_thread(hold_long), _in_thread(wait_turn)]
    for thread in threads:
        thread.join(timeout=60)
    assert events == ["first released", "second acquired"]


def test_a_claim_is_taken_only_when_no_live_holder_has_it(store: ObjectStore) -> None:
    # Job claims: a replica queues a job only if it claimed it; the others leave it alone while the claim lives.
    first, second = Leases(store, ttl_s=0.3), Leases(store, ttl_s=0.3)
    claim = first.claim("job:alice/default/1")
    assert claim is not None
    time.sleep(1.0)  # three times the time to live: the heartbeat keeps the claim alive
    assert second.claim("job:alice/default/1") is None
    assert not claim.lost
    claim.release()
    again = second.claim("job:alice/default/1")
    assert again is not None
    again.release()
    assert not list(store.list(f"{LEASES}/"))


def test_a_claim_of_a_holder_killed_with_minus_9_is_taken_once_it_expires(tmp_path: Path) -> None:
    store, held = LocalStore(tmp_path / "store"), tmp_path / "held"
    claimer = "import pathlib, sys, time\n" + (
        "from soppu.registry.leases import Leases\nfrom soppu.store import open_store\n"
        "claim = Leases(open_store(sys.argv[1]), ttl_s=1.0).claim('job:alice/default/1')\n"
        "assert claim is not None\npathlib.Path(sys.argv[2]).touch()\ntime.sleep(3600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", claimer, str(store.root), str(held)])
    try:
        while not held.exists() and holder.poll() is None:
            time.sleep(0.01)
        assert holder.poll() is None, "the claimer did not start"
        leases = Leases(store, ttl_s=1.0)
        assert leases.claim("job:alice/default/1") is None  # alive: its claim holds
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    deadline = time.monotonic() + 60  # a guard against a hang, not a speed check
    while (claim := leases.claim("job:alice/default/1")) is None:
        assert time.monotonic() < deadline, "the claim of a killed holder was never taken"
        time.sleep(0.1)
    claim.release()
