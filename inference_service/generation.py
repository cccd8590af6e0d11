"""One request's run through the engine, shared by every generation route: map the parameters, start
``engine.generate``, fetch its first item before any response is sent (so errors found up front get their
real HTTP status), count it in the metrics, and always close the engine's generator, however the request ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

import anyio

from .engine import AdapterRef, Engine, EngineError, GenerationParams, GenerationResult, TokenInfo
from .errors import lorax_error
from .metrics import ServiceMetrics
from .params import adapter_ref, generation_params
from .schemas import GenerateParameters
from .settings import EngineSettings

__all__ = ["Generation", "begin"]

_log = logging.getLogger(__name__)
Item = TokenInfo | GenerationResult


def _failure(metrics: ServiceMetrics, e: Exception) -> EngineError:
    """Count a failure; an unexpected exception becomes LoRAX's 500 ``incomplete_generation``, its text logged
    and never sent (it can name storage paths or internals)."""
    if not isinstance(e, EngineError):
        _log.error("generation failed", exc_info=e)
        e = EngineError("generation failed")
    metrics.failed(lorax_error(e)[1])
    return e


async def _close(items: AsyncGenerator[Item, None]) -> None:
    # Shielded: on a client disconnect we are inside a cancelled scope, and the engine's own cleanup
    # (taking the request out of its batch) must still run.
    with anyio.CancelScope(shield=True):
        await items.aclose()


@dataclass
class Generation:
    prompt: str
    params: GenerationParams
    adapter: AdapterRef | None
    _items: AsyncGenerator[Item, None]
    _first: Item
    _metrics: ServiceMetrics
    _started: float

    async def items(self) -> AsyncGenerator[Item, None]:
        """Every TokenInfo, then the GenerationResult; an error raised mid-way is counted and raised as an
        EngineError. The engine's generator is closed when this one is, even part-way."""
        try:
            yield self._counted(self._first)
            async for item in self._items:
                yield self._counted(item)
        except Exception as e:
            failure = _failure(self._metrics, e)
            if failure is e:
                raise
            raise failure from e
        finally:
            await self.aclose()

    def _counted(self, item: Item) -> Item:
        if isinstance(item, GenerationResult):
            self._metrics.succeeded(item, time.perf_counter() - self._started)
        return item

    async def collect(self) -> tuple[list[TokenInfo], GenerationResult]:
        tokens: list[TokenInfo] = []
        async with aclosing(self.items()) as items:
            async for item in items:
                if isinstance(item, GenerationResult):
                    return tokens, item
                tokens.append(item)
        raise _failure(self._metrics, EngineError("the engine ended without a result"))

    async def aclose(self) -> None:
        """Stop the generation in the engine (idempotent)."""
        await _close(self._items)


async def begin(
    engine: Engine, settings: EngineSettings, metrics: ServiceMetrics, prompt: str, parameters: GenerateParameters
) -> Generation:
    """Start a generation; raises the EngineError (422/424/429 ...) found before its first token."""
    metrics.request_count.inc()
    started = time.perf_counter()
    try:
        params = generation_params(parameters, settings)
        adapter = adapter_ref(parameters)
    except EngineError as e:
        raise _failure(metrics, e) from None
    items = engine.generate(prompt, params, adapter)
    try:
        first = await anext(items)
    except StopAsyncIteration:
        raise _failure(metrics, EngineError("the engine ended without a result")) from None
    except Exception as e:
        failure = _failure(metrics, e)
        await _close(items)
        if failure is e:
            raise
        raise failure from e
    except BaseException:  # cancelled while waiting: the request must still leave the engine's queue
        await _close(items)
        raise
    return Generation(prompt, params, adapter, items, first, metrics, started)
