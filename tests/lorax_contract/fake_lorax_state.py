"""The fake LoRAX's state and one generation (router/src/infer.rs, tag ``v0.12.1``): the launcher flags it honours,
the concurrency permit taken without waiting (none left is LoRAX's 429), and a request run on our engine in LoRAX's
order (permit, validation, adapter, tokens), ``best_of`` included, our engine's refusals put in LoRAX's words."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference_service.engine import (
    Engine,
    EngineError,
    GenerationParams,
    GenerationResult,
    Overloaded,
    TokenInfo,
    ValidationFailed,
)
from tests.lorax_contract.fake_lorax_adapters import BASE_MODEL_ADAPTER_ID, AdapterLoader, AdapterLoadError
from tests.lorax_contract.fake_lorax_schema import GenerateRequest, LoraxError
from tests.lorax_contract.fake_lorax_validation import Limits, check_length, check_parameters, sampling_on


@dataclass(frozen=True)
class FakeSettings:
    """The launcher flags the fake honours (launcher/src/main.rs; defaults as there unless said otherwise)."""

    model: Path
    model_id: str | None = None  # default: the model directory as given, as LoRAX reports a local model
    adapter_source: str = "hub"  # launcher main.rs:295, the default source of a request naming none
    max_concurrent_requests: int = 128  # main.rs:396
    max_best_of: int = 2
    max_stop_sequences: int = 4
    max_input_length: int | None = None  # default: max_total_tokens - 1
    max_total_tokens: int | None = None  # default: the model's max_position_embeddings
    disable_sgmv: bool = False  # no punica kernels: no rank padding (utils/punica.py:46-54)
    huggingface_hub_cache: Path | None = None  # LoRAX's /data; default: a fresh temporary directory


# --- the concurrency permit (infer.rs:286-295) --------------------------------------------------------------------


class _Permits:
    """A semaphore taken without waiting: none left is LoRAX's 429 ``Model is overloaded``."""

    def __init__(self, count: int) -> None:
        self.free = count

    def take(self) -> None:
        if self.free <= 0:
            raise LoraxError.overloaded()
        self.free -= 1

    def give(self) -> None:
        self.free += 1


# --- one generation ------------------------------------------------------------------------------------------------


@dataclass
class GenerationRun:
    """What a finished generation reports (infer.rs:400-486's InferResponse)."""

    tokens: list[TokenInfo] = field(default_factory=list)
    result: GenerationResult | None = None
    started: float = field(default_factory=time.perf_counter)


Item = TokenInfo | GenerationResult


class FakeLorax:
    """The state of one fake LoRAX process: the engine, the adapters, the permits, the limits."""

    def __init__(self, settings: FakeSettings, engine: Engine, loader: AdapterLoader, limits: Limits) -> None:
        self.settings = settings
        self.engine = engine
        self.loader = loader
        self.limits = limits
        self.permits = _Permits(settings.max_concurrent_requests)
        self.model_id = settings.model_id or str(settings.model)

    async def items(self, request: GenerateRequest) -> AsyncIterator[Item]:
        """infer.rs:276-355 then the batching task: a permit held until the generation ends, validation, the
        adapter (downloaded and loaded unless loaded), then the tokens. Raises :class:`LoraxError`."""
        self.permits.take()
        try:
            p = request.parameters
            check_parameters(request, self.limits)
            encoded = await self.engine.tokenize(request.inputs, add_special_tokens=request.add_special_tokens)
            max_new_tokens = check_length(len(encoded["input_ids"]), p["max_new_tokens"], self.limits)
            ref = await self._adapter(p["adapter_id"], p["adapter_source"])
            sample = sampling_on(p)
            seed = p["seed"] if p["seed"] is not None else random.getrandbits(63)  # validation.rs:326-328
            params = GenerationParams(
                max_new_tokens=max_new_tokens,
                do_sample=sample,
                temperature=p["temperature"] if sample and p["temperature"] not in (None, 1.0) else None,
                top_k=p["top_k"] if sample else None,
                top_p=p["top_p"] if sample and p["top_p"] is not None and p["top_p"] < 1.0 else None,
                repetition_penalty=p["repetition_penalty"],
                seed=seed if sample else None,
                stop=tuple(p["stop"]),
                ignore_eos_token=p["ignore_eos_token"],
                decoder_input_details=p["decoder_input_details"],
            )
            try:
                async for item in self.engine.generate(request.inputs, params, ref):
                    yield item
            except EngineError as e:
                raise _from_engine(e) from e
        finally:
            self.permits.give()

    async def _adapter(self, adapter_id: str | None, source: str | None) -> Any:
        """adapter.rs:75-94: no id (or an empty one) is the base model; no source is the launcher's default."""
        if not adapter_id or adapter_id == BASE_MODEL_ADAPTER_ID:
            return None
        try:
            return await asyncio.to_thread(self.loader.ref, adapter_id, source or self.settings.adapter_source)
        except AdapterLoadError as e:
            raise LoraxError.generation(f"Server error: {e}") from e  # loader.rs:161-172, client lib.rs:36-42
        except Exception as e:  # boto3, safetensors, OS errors: the server's str(exception) all the same
            raise LoraxError.generation(f"Server error: {e}") from e

    async def run(self, request: GenerateRequest) -> GenerationRun:
        run = GenerationRun()
        async with aclosing(self.items(request)) as items:
            async for item in items:
                if isinstance(item, GenerationResult):
                    run.result = item
                else:
                    run.tokens.append(item)
        if run.result is None:
            raise LoraxError("Incomplete generation", "incomplete_generation", 500)  # infer.rs:479-486
        return run

    async def run_best_of(self, request: GenerateRequest) -> tuple[GenerationRun, list[GenerationRun]]:
        """infer.rs:860-893: ``best_of`` runs at once, the best by mean token logprob, the others returned too."""
        best_of = request.parameters["best_of"] or 1
        if best_of > 1:  # validation.rs:412-424
            if self.limits.max_best_of == 1:
                raise LoraxError.validation("`best_of` != 1 is not allowed for this endpoint")
            if best_of > self.limits.max_best_of:
                raise LoraxError.validation(f"`best_of` must be > 0 and <= {self.limits.max_best_of}. Given: {best_of}")
        runs = list(await asyncio.gather(*(self.run(request) for _ in range(max(best_of, 1)))))
        scores = [sum(t.logprob or 0.0 for t in r.tokens) / max(len(r.tokens), 1) for r in runs]
        best = max(range(len(runs)), key=lambda i: (scores[i], -i))
        return runs.pop(best), runs


def _from_engine(e: EngineError) -> LoraxError:
    """Our engine's refusals in LoRAX's words (its checks come after the fake's own, so rarely reached)."""
    if isinstance(e, ValidationFailed):
        return LoraxError.validation(e.message)
    if isinstance(e, Overloaded):
        return LoraxError.overloaded()
    return LoraxError.generation(f"Server error: {e.message}")
