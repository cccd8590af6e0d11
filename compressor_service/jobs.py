"""The job queue: a bounded in-process queue of accepted uploads feeding worker tasks that run
:meth:`soppu.registry.pipeline.Pipeline.run_job` in a thread, one job at a time per worker.

The queue holds only references; a job's state lives in its record in the bucket, so the API reads it from
there and nothing is lost with the process. On start the runner re-enqueues every job left queued or running
by an earlier process (``pending_jobs``); running a job again is safe, since the pipeline is idempotent. The
store may be down at start: the runner then keeps trying, every ``retry_s``, until it can.

Replicas on one bucket share the jobs through leases (:meth:`soppu.registry.leases.Leases.claim`): a replica
queues a job only once it has claimed the job's lease, and keeps the claim (renewed) until the job leaves its
queue. Every ``reclaim_s`` it looks for pending jobs nobody holds, such as those of a replica that died (even by
``kill -9``) once their claims expire, and claims them while it has room.

A job the store interrupts (an outage, a failed write) is never failed for it: it runs again, backing off from
``retry_s`` to a minute, for as long as the outage lasts.

A job and a deletion of its user never overlap (both hold the pipeline's ``user:{id}`` lock), so a job cannot
publish for an adapter that is being deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any

from soppu.errors import ObjectNotFound, StoreError
from soppu.registry import JobRecord, JobState
from soppu.registry.catalog import pending_jobs
from soppu.registry.leases import Lease
from soppu.registry.pipeline import Pipeline
from soppu.store.layout import AdapterVersion

from .metrics import CompressorMetrics

__all__ = ["JobRunner", "user_lock"]

log = logging.getLogger(__name__)

_MAX_RETRY_S = 60.0


def user_lock(user_id: str) -> str:
    return f"user:{user_id}"


def job_claim(job_id: str) -> str:
    return f"job:{job_id}"


class JobRunner:
    def __init__(
        self, pipeline: Pipeline, workers: int, queue_size: int, retry_s: float, reclaim_s: float | None = None
    ) -> None:
        self.pipeline = pipeline
        self.workers = workers
        self.retry_s = retry_s
        self.reclaim_s = pipeline.leases.ttl_s if reclaim_s is None else reclaim_s
        self.metrics: CompressorMetrics | None = None
        self.running = 0
        self.resumed = False  # the store has answered: the bucket exists and the jobs left pending are queued
        self._queue: asyncio.Queue[AdapterVersion] = asyncio.Queue(maxsize=queue_size)
        self._queued: set[str] = set()  # job ids queued or running here: an id is never queued twice
        self._claims: dict[str, Lease] = {}  # job id -> our claim on it, from enqueue until it leaves the queue
        self._running: set[str] = set()  # job ids a worker thread runs now
        self._tasks: set[asyncio.Task[None]] = set()
        self._failures: dict[str, int] = {}  # job id -> store failures in a row, for the back-off

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def has_room(self) -> bool:
        return not self._queue.full()

    async def start(self) -> None:
        for n in range(self.workers):
            self._spawn(self._work(), f"compressor-worker-{n}")
        self._spawn(self._resume(), "compressor-resume")

    async def stop(self) -> None:
        # A job a worker thread is running goes on in that thread until it finishes or the process exits; its
        # record still says "running", so the next process (or another replica, once the claim expires) runs it
        # again. The claims on jobs only queued here are given back at once.
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        waiting = [claim for job_id, claim in self._claims.items() if job_id not in self._running]

        def give_back() -> None:
            for claim in waiting:
                claim.release()

        with contextlib.suppress(StoreError):
            await asyncio.to_thread(give_back)

    async def enqueue(self, version: AdapterVersion) -> bool:
        """Queue ``version``'s job here if no other replica has claimed it; whether it is queued here."""
        if version.job_id in self._queued:
            return True
        self._queued.add(version.job_id)
        try:
            claim = await asyncio.to_thread(self.pipeline.leases.claim, job_claim(version.job_id))
        except StoreError as e:
            self._queued.discard(version.job_id)
            delay = self._backoff(version)
            log.warning("job %s not claimed (store: %s); trying again in %.1fs", version.job_id, e.code, delay)
            self._later(lambda: self.enqueue(version), delay, version)
            return False
        if claim is None:  # another replica has it queued or running
            self._queued.discard(version.job_id)
            return False
        self._claims[version.job_id] = claim
        await self._queue.put(version)  # waits only when racing uploads overfilled it after has_room()
        return True

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resume(self) -> None:
        while True:
            try:
                pending = await asyncio.to_thread(self._prepare_store)
            except StoreError as e:
                log.warning("store not usable yet (%s); trying again in %ss", e.code, self.retry_s)
                await asyncio.sleep(self.retry_s)
                continue
            except Exception:  # e.g. a record that does not parse: readiness stays false, and we keep trying
                log.exception("could not list the pending jobs; trying again in %ss", self.retry_s)
                await asyncio.sleep(self.retry_s)
                continue
            if pending:
                log.info("resuming %d job(s) left queued or running", len(pending))
            for version in pending:
                await self.enqueue(version)
            self.resumed = True
            break
        await self._reclaim()

    async def _reclaim(self) -> None:
        """Every ``reclaim_s``: claim and queue the pending jobs no replica holds (a dead one's, once expired)."""
        while True:
            await asyncio.sleep(self.reclaim_s)
            if not self.has_room():
                continue
            try:
                pending = await asyncio.to_thread(pending_jobs, self.pipeline.store)
            except Exception as e:  # a store outage, or a record that does not parse: look again next round
                log.warning(
                    "could not list the pending jobs (%s); looking again in %ss", type(e).__name__, self.reclaim_s
                )
                continue
            claimed = 0
            for version in pending:
                if version.job_id in self._queued:
                    continue
                if not self.has_room():
                    break
                claimed += await self.enqueue(version)
            if claimed:
                log.info("claimed %d pending job(s) no replica held", claimed)

    def _prepare_store(self) -> list[AdapterVersion]:
        store = self.pipeline.store
        store.ensure_bucket()
        store.check()
        return pending_jobs(store)

    async def _work(self) -> None:
        while True:
            version = await self._queue.get()
            self.running += 1
            retrying = False
            try:
                retrying = await self._run(version)
            finally:
                self.running -= 1
                self._queue.task_done()
                if not retrying:
                    self._queued.discard(version.job_id)
                    if (claim := self._claims.pop(version.job_id, None)) is not None:
                        with contextlib.suppress(StoreError):  # unreleased, it expires on its own
                            await asyncio.to_thread(claim.release)

    async def _run(self, version: AdapterVersion) -> bool:
        """Run the job; whether it is to run again (the store interrupted it; it stays queued and claimed)."""
        claim = self._claims.get(version.job_id)
        if claim is not None and claim.lost:  # paused past its expiry and taken over: the taker runs it
            log.warning("job %s left to the replica that took over its claim", version.job_id)
            return False
        started = time.perf_counter()
        self._running.add(version.job_id)
        try:
            job = await asyncio.to_thread(self._run_locked, version)
        except ObjectNotFound:
            log.info("job %s is gone (its adapter was deleted); skipped", version.job_id)
            return False
        except StoreError as e:
            # Retried for as long as it takes (a store outage is not the upload's fault), backing off to a minute.
            delay = self._backoff(version)
            log.warning("job %s interrupted by the store (%s); retrying in %.1fs", version.job_id, e.code, delay)
            self._later(lambda: self._queue.put(version), delay, version)
            return True
        except Exception:
            # A bug, or an input the core does not guard against: fail the job rather than retry it forever.
            log.exception("job %s crashed", version.job_id)
            with contextlib.suppress(StoreError):
                await asyncio.to_thread(self._mark_crashed, version)
            return False
        self._failures.pop(version.job_id, None)
        if self.metrics is not None:
            self.metrics.job_finished(job, time.perf_counter() - started)
        log.info("job %s %s in %.2fs", version.job_id, job.state, time.perf_counter() - started)
        return False

    def _run_locked(self, version: AdapterVersion) -> JobRecord:
        try:
            with self.pipeline.lock(user_lock(version.user_id)):
                return self.pipeline.run_job(version)
        finally:
            self._running.discard(version.job_id)

    def _mark_crashed(self, version: AdapterVersion) -> None:
        job = self.pipeline.load_job(version)
        error = {"code": "internal_error", "message": "the job crashed; see the compressor's log"}
        self.pipeline.save_job(replace(job, state=JobState.FAILED.value, error=error))

    def _backoff(self, version: AdapterVersion) -> float:
        """The wait before the job's next try, after one more store failure in a row: doubling to a minute."""
        self._failures[version.job_id] = failures = self._failures.get(version.job_id, 0) + 1
        return min(self.retry_s * 2.0 ** (failures - 1), _MAX_RETRY_S)

    def _later(self, step: Callable[[], Awaitable[object]], delay: float, version: AdapterVersion) -> None:
        async def later() -> None:
            await asyncio.sleep(delay)
            await step()

        self._spawn(later(), f"compressor-retry-{version.job_id}")
