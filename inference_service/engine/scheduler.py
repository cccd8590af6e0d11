"""The scheduler: the engine's decisions, and nothing else (as vLLM's ``v1/core/sched/scheduler.py``).

It keeps the waiting queue and the running batch and decides, at every token boundary, what the next step is:
admit waiting requests (as many as the batch has room for, oldest first) or advance every running row by one
token. It decides when a row is finished (its end-of-sequence token unless ignored, a stop sequence the
detokenizer found, or its token budget), and takes finished, cancelled and failed rows out of the batch.

No model calls (:mod:`.runner`), no text (:mod:`.text`) and no HTTP: the engine (:mod:`.engine`) carries out
each decision. Its running list is row-aligned with the model's batch: every change to it returns the rows
kept, for the engine to apply to the model's side.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .runner import Loaded
from .types import FinishReason, GenerationParams

__all__ = ["Request", "Scheduler", "Step"]


@dataclass(eq=False)
class Request:
    """What the scheduler knows of one request: its prompt's ids, its parameters, its adapter and its tokens."""

    prompt: list[int]
    params: GenerationParams
    adapter: Loaded
    generated: list[int] = field(default_factory=list)
    accepted_at: float = field(default_factory=time.perf_counter)
    admitted_at: float = 0.0
    cancelled: bool = False  # set by the engine when its client goes away; the row leaves at the next boundary


R = TypeVar("R", bound=Request)


@dataclass(frozen=True)
class Step(Generic[R]):
    """The next step: prefill ``admit`` (taken off the waiting queue), or, when it is empty, decode one token
    for every running row."""

    admit: list[R]


class Scheduler(Generic[R]):
    def __init__(self, *, max_batch_size: int, max_queue: int, eos_token_id: int | None) -> None:
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._eos = eos_token_id
        self.waiting: deque[R] = deque()
        self.running: list[R] = []

    @property
    def queue_full(self) -> bool:
        return len(self.waiting) >= self.max_queue

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def add(self, request: R) -> None:
        self.waiting.append(request)

    def schedule(self) -> Step[R] | None:
        """The next step, or None when there is nothing to do. Admitting comes first whenever the batch has
        room: new requests get their first token without waiting for the running ones to finish."""
        if self.idle:
            return None
        room = self.max_batch_size - len(self.running)
        if self.waiting and room > 0:
            return Step([self.waiting.popleft() for _ in range(min(room, len(self.waiting)))])
        return Step([])

    def admitted(self, requests: list[R]) -> range:
        """``requests`` were prefilled: they join the batch at its end. Returns their rows."""
        now, first = time.perf_counter(), len(self.running)
        for request in requests:
            request.admitted_at = now
        self.running.extend(requests)
        return range(first, len(self.running))

    def finish_reason(self, request: R, token: int, *, stopped: bool) -> FinishReason | None:
        """Why ``request`` ends after choosing ``token`` (``stopped``: the detokenizer found a stop sequence)."""
        if token == self._eos and not request.params.ignore_eos_token:
            return "eos_token"
        if stopped:
            return "stop_sequence"
        if len(request.generated) >= request.params.max_new_tokens:
            return "length"
        return None

    def drop_cancelled(self) -> list[int] | None:
        """Forget cancelled requests. Returns the running rows kept when some running ones left, else None."""
        self.waiting = deque(r for r in self.waiting if not r.cancelled)
        if not any(r.cancelled for r in self.running):
            return None
        return self.remove({i for i, r in enumerate(self.running) if r.cancelled})

    def remove(self, rows: set[int]) -> list[int]:
        """Take ``rows`` out of the batch; returns the rows kept, in order."""
        kept = [i for i in range(len(self.running)) if i not in rows]
        self.running = [self.running[i] for i in kept]
        return kept

    def clear_running(self) -> list[R]:
        """Empty the batch (its step failed); returns the requests it held."""
        running, self.running = self.running, []
        return running

    def clear(self) -> list[R]:
        """Forget every request (the engine is stopping); returns them, waiting then running."""
        everything = [*self.waiting, *self.running]
        self.waiting.clear()
        self.running = []
        return everything
