"""The engine's public API (as vLLM's ``v1/engine/core.py``): submit a request and read its stream of outputs,
cancel it by closing that stream, read the engine's info and stats, start and stop its loop.

Intake: a request is validated (its prompt's length in characters first, then its tokens, counted in a worker
thread so a long prompt never stalls the event loop the other streams are served from), refused when the queue
is full, its adapter is fetched through the cache (errors surface before any token), and it waits in the
scheduler's queue. One loop owns the model: at every token boundary it asks the :class:`~.scheduler.Scheduler`
what to do, and the :class:`~.runner.RunningBatch` runs it (a prefill of admitted prompts, which yields their
first token, or one decode token for every running row). The engine chooses each row's token
(:mod:`.sampling`), detokenizes it (:mod:`.text`) and hands it to the request's async iterator at once.
A row whose sampling fails (its logits or its parameters give no valid distribution) fails alone; only a
failed forward pass fails every row it carried.

Errors are the typed tree of :mod:`.types`; what HTTP status each answers with is the app's business
(:mod:`inference_service.errors`). What clients read in an error never holds an exception's text; the log gets
the traceback.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from soppu.models import load_causal_lm
from soppu.sampling import SAMPLING_LIMITS

from .cache import AdapterCache
from .runner import ModelRunner, RunningBatch
from .sampling import choose_tokens, make_generator
from .scheduler import Request, Scheduler
from .sources import SourceRules
from .text import TextStream
from .types import (
    AdapterRef,
    EngineError,
    FinishReason,
    GenerationFailed,
    GenerationParams,
    GenerationResult,
    Overloaded,
    TokenInfo,
    ValidationFailed,
)

__all__ = ["Engine", "EngineConfig", "EngineInfo", "EngineStats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    model_path: Path
    device: str = "auto"
    max_batch_size: int = 32
    max_queue: int = 256
    adapter_cache_bytes: int = 1 << 30
    max_input_length: int = 1024
    max_total_tokens: int = 2048
    model_id: str | None = None
    adapter_revalidate_s: float = 1.0
    # Longer prompts are refused before tokenizing: tokenizing costs time linear in the characters.
    max_input_chars: int = 65536
    sources: SourceRules = field(default_factory=SourceRules)  # nothing readable unless configured


@dataclass(frozen=True)
class EngineInfo:
    model_id: str
    model_dtype: str
    device_type: str
    max_input_length: int
    max_total_tokens: int
    max_batch_size: int
    max_queue: int


@dataclass(frozen=True)
class EngineStats:
    queue_length: int
    batch_size: int
    cached_adapters: int
    cache_bytes: int
    adapter_downloads: int


Item = TokenInfo | GenerationResult | EngineError


@dataclass(eq=False, kw_only=True)
class _Sequence(Request):
    """A request as the engine carries it: the scheduler's view plus its output side (text, sampling, queue)."""

    text: TextStream
    seed: int | None
    generator: torch.Generator | None
    out: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)
    prefill: list[TokenInfo] = field(default_factory=list)


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        model, self.tokenizer = load_causal_lm(config.model_path, config.device)
        self.runner = ModelRunner(model)
        self.cache = AdapterCache(
            self.runner.shapes,
            budget_bytes=config.adapter_cache_bytes,
            revalidate_s=config.adapter_revalidate_s,
            rules=config.sources,
        )
        self._special = set(self.tokenizer.all_special_ids)
        self.scheduler: Scheduler[_Sequence] = Scheduler(
            max_batch_size=config.max_batch_size, max_queue=config.max_queue, eos_token_id=self.tokenizer.eos_token_id
        )
        self.batch = RunningBatch(self.runner)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- public surface --------------------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        c = self.config
        return EngineInfo(
            model_id=c.model_id or Path(c.model_path).name,
            model_dtype=str(self.runner.dtype).removeprefix("torch."),
            device_type=self.runner.device.type,
            max_input_length=c.max_input_length,
            max_total_tokens=c.max_total_tokens,
            max_batch_size=c.max_batch_size,
            max_queue=c.max_queue,
        )

    @property
    def healthy(self) -> bool:
        """True while the batching loop runs (it never ends on its own; if it died, nothing is served)."""
        return self._task is not None and not self._task.done()

    @property
    def stats(self) -> EngineStats:
        cache, s = self.cache.stats, self.scheduler
        return EngineStats(len(s.waiting), len(s.running), cache.entries, cache.bytes, cache.downloads)

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="engine-batching-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for seq in self.scheduler.clear():
            seq.out.put_nowait(EngineError("the engine is shutting down", code="shutting_down"))
        self.batch.clear()

    async def generate(
        self, prompt: str, params: GenerationParams, adapter: AdapterRef | None = None
    ) -> AsyncGenerator[TokenInfo | GenerationResult, None]:
        """Yield each generated token, then the result. Errors before the first token raise on first ``anext``.
        Closing the generator early cancels the request: its row leaves the batch at the next token boundary."""
        seq = await self._intake(prompt, params, adapter)
        self.scheduler.add(seq)
        self._wake.set()
        try:
            while True:
                item = await seq.out.get()
                if isinstance(item, EngineError):
                    raise item
                yield item
                if isinstance(item, GenerationResult):
                    return
        finally:
            seq.cancelled = True  # a client that went away frees its row at the next token boundary

    async def tokenize(self, prompt: str, **options: Any) -> Any:
        """The tokenizer's encoding of ``prompt``, computed in a worker thread (the fast tokenizer releases the
        GIL), after the cheap character cap: no prompt costs the event loop more than a ``len``."""
        if len(prompt) > self.config.max_input_chars:
            raise ValidationFailed(
                f"inputs has {len(prompt)} characters, more than max_input_chars {self.config.max_input_chars}",
                code="input_too_many_chars",
            )
        return await asyncio.to_thread(self.tokenizer, prompt, **options)

    # --- intake ----------------------------------------------------------------------------------------

    async def _intake(self, prompt: str, params: GenerationParams, adapter: AdapterRef | None) -> _Sequence:
        ids = await self._validate(prompt, params)
        if self.scheduler.queue_full:
            raise Overloaded(f"the queue is full ({self.config.max_queue} requests waiting)")
        loaded = await self.cache.get(adapter) if adapter is not None else None
        seed = params.seed if params.seed is not None else (random.getrandbits(63) if params.do_sample else None)
        generator = make_generator(seed, torch.device("cpu")) if seed is not None else None
        text = TextStream(self.tokenizer, params.stop)
        return _Sequence(ids, params, loaded, text=text, seed=seed, generator=generator)

    async def _validate(self, prompt: str, params: GenerationParams) -> list[int]:
        c = self.config
        ids: list[int] = (await self.tokenize(prompt))["input_ids"]
        if not ids:
            raise ValidationFailed("inputs must not be empty", code="input_empty")
        if len(ids) > c.max_input_length:
            raise ValidationFailed(
                f"inputs has {len(ids)} tokens, more than max_input_length {c.max_input_length}", code="input_too_long"
            )
        if params.max_new_tokens < 1:
            raise ValidationFailed("max_new_tokens must be at least 1", code="max_new_tokens")
        if params.seed is not None and not 0 <= params.seed <= SAMPLING_LIMITS.max_seed:
            # torch's generator cannot take it; the HTTP layer refuses it first, this guards direct callers
            raise ValidationFailed(f"seed must be >= 0 and <= {SAMPLING_LIMITS.max_seed}", code="seed")
        if len(ids) + params.max_new_tokens > c.max_total_tokens:
            raise ValidationFailed(
                f"inputs tokens + max_new_tokens must be <= {c.max_total_tokens}; "
                f"given {len(ids)} inputs tokens and {params.max_new_tokens} max_new_tokens",
                code="total_tokens",
            )
        return ids

    # --- the loop: carry out the scheduler's decisions -------------------------------------------------

    async def _loop(self) -> None:
        while True:
            kept = self.scheduler.drop_cancelled()
            if kept is not None:
                self.batch.keep(kept)
            step = self.scheduler.schedule()
            if step is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                if step.admit:
                    await self._admit(step.admit)
                else:
                    await self._decode()
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed forward pass fails its rows, never the loop
                log.exception("generation step failed")
                self._fail_running(GenerationFailed("generation failed"))

    async def _admit(self, new: list[_Sequence]) -> None:
        details = any(s.params.decoder_input_details for s in new)
        try:
            logits = await asyncio.to_thread(
                self.batch.prefill, [s.prompt for s in new], [s.adapter for s in new], all_logits=details
            )
        except Exception:
            log.exception("prefill failed")
            for seq in new:
                seq.out.put_nowait(GenerationFailed("prefill failed"))
            return
        for i, seq in enumerate(new):
            if seq.params.decoder_input_details:
                seq.prefill = self._prefill_details(seq, logits[i])
        rows = self.scheduler.admitted(new)
        self._emit(logits[:, -1] if details else logits, rows)

    async def _decode(self) -> None:
        last = [s.generated[-1] for s in self.scheduler.running]
        logits = await asyncio.to_thread(self.batch.decode, last)
        self._emit(logits, range(len(self.scheduler.running)))

    def _emit(self, logits: torch.Tensor, rows: range) -> None:
        """Choose, detokenize and hand out each row's next token; finished and failed rows leave the batch."""
        finished = set()
        seqs = [self.scheduler.running[row] for row in rows]
        chosen = choose_tokens(
            logits,
            [s.params for s in seqs],
            lambda i: seqs[i].prompt + seqs[i].generated,
            [s.generator for s in seqs],
        )
        for row, seq, choice in zip(rows, seqs, chosen, strict=True):
            if choice is None:
                log.warning("sampling gave no valid distribution for a row (%s); failing that request", seq.params)
                seq.out.put_nowait(GenerationFailed("sampling failed: the parameters gave no valid distribution"))
                finished.add(row)
                continue
            token, logprob = choice
            seq.generated.append(token)
            text = seq.text.push(token)
            reason = self.scheduler.finish_reason(seq, token, stopped=seq.text.stopped)
            seq.out.put_nowait(TokenInfo(token, text, logprob, token in self._special, final=reason is not None))
            if reason is not None:
                seq.out.put_nowait(self._result(seq, reason))
                finished.add(row)
        if finished:
            self.batch.keep(self.scheduler.remove(finished))

    def _result(self, seq: _Sequence, reason: FinishReason) -> GenerationResult:
        queue_s, inference_s = seq.admitted_at - seq.accepted_at, time.perf_counter() - seq.admitted_at
        return GenerationResult(
            seq.text.text, reason, len(seq.prompt), len(seq.generated), seq.seed, seq.prefill, queue_s, inference_s
        )

    def _prefill_details(self, seq: _Sequence, logits: torch.Tensor) -> list[TokenInfo]:
        # Left padding: the prompt's positions are the last len(prompt) of the row.
        logprobs = logits[-len(seq.prompt) :].log_softmax(-1)
        tokens = [TokenInfo(seq.prompt[0], self.tokenizer.decode([seq.prompt[0]]), None)]
        for i, token in enumerate(seq.prompt[1:]):
            tokens.append(TokenInfo(token, self.tokenizer.decode([token]), float(logprobs[i, token])))
        return tokens

    def _fail_running(self, error: EngineError) -> None:
        for seq in self.scheduler.clear_running():
            seq.out.put_nowait(error)
        self.batch.clear()

    def __repr__(self) -> str:
        info: Any = self.info
        return f"Engine(model_id={info.model_id!r}, device={info.device_type})"
