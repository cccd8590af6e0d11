"""Locks that hold across compressor replicas: a thread lock inside the process, then a lease in the store.

A lease is the object ``leases/{digest}.json`` (:func:`soppu.store.layout.lease_key`) naming its holder and the
wall-clock time it expires. It is taken with a create-only put; one that has expired (its holder died, even by
``kill -9``) is taken over with a put conditional on the ETag that was read, so of several replicas racing for
it exactly one wins. While held, a heartbeat thread renews it every third of its time to live, again
conditionally: a holder that lost it (paused past its expiry, then taken over) learns so and says so in the log.
Released by deleting it after checking it is still ours.

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

__all__ = ["DEFAULT_TTL_S", "Leases"]

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 30.0
_MAX_WAIT_S = 0.5  # the longest pause between two looks at a held lease


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

    def _record(self) -> bytes:
        return json.dumps({"holder": self.holder, "expires_at": time.time() + self.ttl_s}).encode()

    @contextmanager
    def hold(self, name: str) -> Iterator[None]:
        """Hold the lock ``name`` for the block, waiting as long as another holder has it."""
        with self._guard:
            local = self._threads[name]
        with local:
            key = lease_key(name)
            etag = self._acquire(key)
            stop = threading.Event()
            renewer = threading.Thread(target=self._renew, args=(key, etag, stop), name=f"lease-{key}", daemon=True)
            renewer.start()
            try:
                yield
            finally:
                stop.set()
                renewer.join()
                try:
                    self._release(key)
                except Exception:  # a store outage: the lease expires on its own; the block's outcome stands
                    log.warning("could not release lease %s", key, exc_info=True)

    def _acquire(self, key: str) -> str:
        wait = 0.005
        while True:
            try:
                return self.store.put(key, self._record(), create_only=True).etag
            except ObjectExists:
                pass
            try:
                held = self.store.get(key)
            except ObjectNotFound:
                continue  # released since: try again at once
            if _expires_at(held.data) < time.time():
                try:
                    taken = self.store.put(key, self._record(), if_match=held.info.etag)
                except (ObjectChanged, ObjectNotFound):
                    continue  # another replica took it over (or its holder came back and released it)
                log.warning("took over lease %s: its holder did not renew it", key)
                return taken.etag
            time.sleep(wait * random.uniform(0.5, 1.5))  # jitter: replicas waiting together do not poll together
            wait = min(wait * 2, _MAX_WAIT_S)

    def _renew(self, key: str, etag: str, stop: threading.Event) -> None:
        while not stop.wait(self.ttl_s / 3):
            try:
                etag = self.store.put(key, self._record(), if_match=etag).etag
            except (ObjectChanged, ObjectNotFound):
                log.error("lost lease %s: held past its expiry and taken over; its writes may race", key)
                return
            except Exception:  # a store outage: keep trying while the lease has time left
                log.warning("could not renew lease %s", key, exc_info=True)

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
