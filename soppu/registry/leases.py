"""Locks that hold across compressor replicas: a thread lock inside the process, then a lease in the store.

A lease is the object ``leases/{digest}.json`` (:func:`soppu.store.layout.lease_key`) naming its holder and the
wall-clock time it expires. It is taken with a create-only put; one that has expired (its holder died, even by
``kill -9``) is taken over with a put conditional on the ETag that was read, so of several replicas racing for
it exactly one wins. While held, one heartbeat thread per process renews every lease the process holds, each
third of their time to live, again conditionally: a holder that lost one (paused past its expiry, then taken
over) learns so and says so in the log. Released by deleting it after checking it is still ours.

:meth:`Leases.hold` waits for a lock (a user's jobs, a cohort); :meth:`Leases.claim` takes one only if it is free
(a job: the replica that claims it runs it, and the others leave it until the claim expires).

Holders are told apart by a random id per :class:`Leases`; expiry compares wall clocks, so replicas on several
hosts need their clocks in step to well under the time to live (30 s by default), as NTP keeps them.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from soppu.errors import ObjectChanged, ObjectExists, ObjectNotFound
from soppu.store.base import ObjectStore
from soppu.store.layout import lease_key

__all__ = ["DEFAULT_TTL_S", "Lease", "Leases"]

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 30.0
_MAX_WAIT_S = 0.5  # the longest pause between two looks at a held lease


class Lease:
    """A lease this process holds (from :meth:`Leases.claim`): renewed until :meth:`release`."""

    def __init__(self, leases: Leases, key: str) -> None:
        self._leases = leases
        self.key = key

    @property
    def lost(self) -> bool:
        """Whether another holder took it over (this one was paused past its expiry)."""
        return self.key not in self._leases._held

    def release(self) -> None:
        self._leases._let_go(self.key)


class Leases:
    """Named locks over ``store``, mutually exclusive across threads and processes (any host, one bucket)."""

    def __init__(self, store: ObjectStore, ttl_s: float = DEFAULT_TTL_S) -> None:
        if ttl_s <= 0:
            raise ValueError(f"a lease's time to live must be positive, got {ttl_s}")
        self.store = store
        self.ttl_s = ttl_s
        self.holder = uuid.uuid4().hex
        self._threads: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()
        self._held: dict[str, str] = {}  # lease key -> the ETag of our last write, renewed by one heartbeat
        self._heartbeat: threading.Thread | None = None

    def _record(self) -> bytes:
        return json.dumps({"holder": self.holder, "expires_at": time.time() + self.ttl_s}).encode()

    @contextmanager
    def hold(self, name: str) -> Iterator[None]:
        """Hold the lock ``name`` for the block, waiting as long as another holder has it."""
        with self._guard:
            local = self._threads[name]
        with local:
            key = lease_key(name)
            self._keep(key, self._acquire(key))
            try:
                yield
            finally:
                self._let_go(key)

    def claim(self, name: str) -> Lease | None:
        """Take the lock ``name`` if no live holder has it, without waiting; None if one has. The lease is kept
        (renewed) until its :meth:`Lease.release`, so a job claimed this way is claimed until it is done."""
        key = lease_key(name)
        etag = self._try_acquire(key)
        if etag is None:
            return None
        self._keep(key, etag)
        return Lease(self, key)

    def _try_acquire(self, key: str) -> str | None:
        """Our ETag once the lease is ours; None while a live holder has it; retried at once on a lost race."""
        while True:
            try:
                return self.store.put(key, self._record(), create_only=True).etag
            except ObjectExists:
                pass
            try:
                held = self.store.get(key)
            except ObjectNotFound:
                continue  # released since: try again at once
            if _expires_at(held.data) >= time.time():
                return None
            try:
                taken = self.store.put(key, self._record(), if_match=held.info.etag)
            except (ObjectChanged, ObjectNotFound):
                continue  # another replica took it over (or its holder came back and released it)
            log.warning("took over lease %s: its holder did not renew it", key)
            return taken.etag

    def _acquire(self, key: str) -> str:
        wait = 0.005
        while (etag := self._try_acquire(key)) is None:
            time.sleep(wait * random.uniform(0.5, 1.5))  # jitter: replicas waiting together do not poll together
            wait = min(wait * 2, _MAX_WAIT_S)
        return etag

    def _keep(self, key: str, etag: str) -> None:
        with self._guard:
            self._held[key] = etag
            if self._heartbeat is None or not self._heartbeat.is_alive():
                # One thread renews every lease this process holds; it ends when none is left.
                self._heartbeat = threading.Thread(target=self._renew_all, name="lease-heartbeat", daemon=True)
                self._heartbeat.start()

    def _let_go(self, key: str) -> None:
        with self._guard:
            held = self._held.pop(key, None)
        if held is None:
            return  # lost to a takeover (logged then), or released already
        try:
            self._release(key)
        except Exception:  # a store outage: the lease expires on its own; the holder's outcome stands
            log.warning("could not release lease %s", key, exc_info=True)

    def _renew_all(self) -> None:
        while True:
            time.sleep(self.ttl_s / 3)
            with self._guard:
                if not self._held:
                    self._heartbeat = None
                    return
                held = dict(self._held)
            for key, etag in held.items():
                try:
                    renewed = self.store.put(key, self._record(), if_match=etag).etag
                except (ObjectChanged, ObjectNotFound):
                    with self._guard:
                        if self._held.get(key) == etag:  # not released meanwhile: truly taken over
                            del self._held[key]
                            log.error("lost lease %s: held past its expiry and taken over; its writes may race", key)
                    continue
                except Exception:  # a store outage: keep trying while the lease has time left
                    log.warning("could not renew lease %s", key, exc_info=True)
                    continue
                with self._guard:
                    if key in self._held:  # released while we renewed it: the release deleted it, or will
                        self._held[key] = renewed

    def _release(self, key: str) -> None:
        try:
            held = self.store.get(key)
        except ObjectNotFound:
            return
        if json.loads(held.data).get("holder") == self.holder:
            self.store.delete(key)


def _expires_at(data: bytes) -> float:
    try:
        return float(json.loads(data)["expires_at"])
    except (ValueError, KeyError, TypeError):
        return 0.0  # unreadable: as good as expired
