"""The job queue: a bounded in-process queue of accepted uploads feeding worker tasks that run
:meth:`soppu.registry.pipeline.Pipeline.run_job` in a thread, one job at a time per worker.

The queue holds only references; a job's state lives in its record in the bucket, so the API reads it from
there and nothing is lost with the process. On start the runner re-enqueues every job left queued or running
by an earlier process (``pending_jobs``); running a job again is safe, since the pipeline is idempotent. The
store may be down at start: the runner then keeps trying, every ``retry_s``, until it can.

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
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from soppu.errors import ObjectNotFound, StoreError
from soppu.registry import JobRecord, JobState
from soppu.registry.catalog import pending_jobs
from soppu.registry.pipeline import Pipeline
from soppu.store import S3Store
from soppu.store.layout import AdapterVersion

from .metrics import CompressorMetrics

__all__ = ["JobRunner", "user_lock"]

log = logging.getLogger(__name__)

_MAX_RETRY_S = 60.0


def user_lock(user_id: str) -> str:
    return f"user:{user_id}"


class JobRunner:
    def __init__(self, pipeline: Pipeline, workers: int, queue_size: int, retry_s: float) -> None:
        self.pipeline = pipeline
        self.workers = workers
        self.retry_s = retry_s
        self.metrics: CompressorMetrics | None = None
        self.running = 0
        self.resumed = False  # the store has answered: the bucket exists and the jobs left pending are queued
        self._queue: asyncio.Queue[AdapterVersion] = asyncio.Queue(maxsize=queue_size)
        self._queued: set[str] = set()  # job ids queued or running here: an id is never queued twice
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
        # record still says "running", so the next process runs it again.
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def enqueue(self, version: AdapterVersion) -> None:
        if version.job_id in self._queued:
            return
        self._queued.add(version.job_id)
        await self._queue.put(version)  # waits only when racing uploads overfilled it after has_room()

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
            return

    def _prepare_store(self) -> list[AdapterVersion]:
        store = self.pipeline.store
        if isinstance(store, S3Store):
            store.ensure_bucket()
        store.check()
        return pending_jobs(store)

    async def _work(self) -> None:
        while True:
            version = await self._queue.get()
            self.running += 1
            try:
                await self._run(version)
            finally:
                self.running -= 1
                self._queued.discard(version.job_id)
                self._queue.task_done()

    async def _run(self, version: AdapterVersion) -> None:
        started = time.perf_counter()
        try:
            job = await asyncio.to_thread(self._run_locked, version)
        except ObjectNotFound:
            log.info("job %s is gone (its adapter was deleted); skipped", version.job_id)
            return
        except StoreError as e:
            # Retried for as long as it takes (a store outage is not the upload's fault), backing off to a minute.
            self._failures[version.job_id] = failures = self._failures.get(version.job_id, 0) + 1
            delay = min(self.retry_s * 2 ** (failures - 1), _MAX_RETRY_S)
            log.warning("job %s interrupted by the store (%s); retrying in %.1fs", version.job_id, e.code, delay)
            self._retry_later(version, delay)
            return
        except Exception:
            # A bug, or an input the core does not guard against: fail the job rather than retry it forever.
            log.exception("job %s crashed", version.job_id)
            with contextlib.suppress(StoreError):
                await asyncio.to_thread(self._mark_crashed, version)
            return
        self._failures.pop(version.job_id, None)
        if self.metrics is not None:
            self.metrics.job_finished(job, time.perf_counter() - started)
        log.info("job %s %s in %.2fs", version.job_id, job.state, time.perf_counter() - started)

    def _run_locked(self, version: AdapterVersion) -> JobRecord:
        with self.pipeline.lock(user_lock(version.user_id)):
            return self.pipeline.run_job(version)

    def _mark_crashed(self, version: AdapterVersion) -> None:
        job = self.pipeline.load_job(version)
        error = {"code": "internal_error", "message": "the job crashed; see the compressor's log"}
        self.pipeline.save_job(replace(job, state=JobState.FAILED.value, error=error))

    def _retry_later(self, version: AdapterVersion, delay: float) -> None:
        async def later() -> None:
            await asyncio.sleep(delay)
            await self.enqueue(version)

        self._spawn(later(), f"compressor-retry-{version.job_id}")
