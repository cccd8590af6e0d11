"""One request never stalls or fails the others: a row whose sampling has no valid distribution fails alone
(the batch keeps going), and a long prompt is counted off the event loop (streams in flight keep receiving
tokens meanwhile) or, over the character cap, refused before the tokenizer sees it.

In-process on the example model. Ordering is proven by behaviour, never by time: a test double holds the
model's decode step or the tokenizer on a threading.Event, and the tests watch what happens meanwhile."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from inference_service.engine import (
    Engine,
    EngineConfig,
    GenerationFailed,
    GenerationParams,
    GenerationResult,
    TokenInfo,
    ValidationFailed,
)
from inference_service.engine.sampling import choose_tokens
from inference_service.errors import lorax_error
from tests.inference_service.example_user import serve

MAX_INPUT_CHARS = 20_000
LONG_PROMPT = "word " * 3000  # under the character cap, far over max_input_length (1024 tokens)
RUNNING = GenerationParams(max_new_tokens=64, ignore_eos_token=True)  # outlives every test's checks
DEADLOCK_BREAK_S = 20.0  # only ends a wait the code under test failed to release; never asserted on


class Probe:
    """Stands in for the engine's tokenizer and wraps its model's decode step: counts decode steps, can hold the
    next ones, and holds the encoding of ``LONG_PROMPT`` in whichever thread runs it until released."""

    def __init__(self, engine: Engine) -> None:
        self.decodes = 0
        self.decode_free = threading.Event()
        self.decode_free.set()
        self.encoding = threading.Event()  # the long prompt's encoding has begun
        self.release = threading.Event()
        self.encoded: list[int] = []  # length of each text the tokenizer encoded
        self._tokenizer, self._decode = engine.tokenizer, engine.runner.decode
        engine.runner.decode = self.model_step  # type: ignore[method-assign]
        engine.tokenizer = self

    def model_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.decode_free.wait(DEADLOCK_BREAK_S)
        self.decodes += 1
        return self._decode(*args, **kwargs)

    def __call__(self, text: str, **options: Any) -> Any:
        self.encoded.append(len(text))
        if text == LONG_PROMPT:
            self.encoding.set()
            self.release.wait(DEADLOCK_BREAK_S)
        return self._tokenizer(text, **options)

    def __getattr__(self, name: str) -> Any:  # decode, all_special_ids ...: the real tokenizer's
        return getattr(self._tokenizer, name)


@pytest.fixture(scope="module")
def probed(examples_dir: Path) -> tuple[Engine, Probe]:
    engine = Engine(EngineConfig(examples_dir / "base", device="cpu", max_input_chars=MAX_INPUT_CHARS))
    return engine, Probe(engine)


@pytest.fixture
def engine(probed: tuple[Engine, Probe], one_torch_thread: None) -> Iterator[Engine]:
    engine, probe = probed
    yield engine
    probe.decode_free.set()
    probe.release.set()
    probe.encoding.clear()
    probe.release.clear()


async def _until(condition: Any) -> None:
    # Polls the event loop, not the clock: the condition is what the test is about.
    while not condition():
        await asyncio.sleep(0.005)


def test_choose_tokens_leaves_a_row_without_a_distribution_out_alone() -> None:
    logits = torch.randn(3, 16)
    logits[2, 4] = float("nan")  # an overflowing adapter's row
    logits[1, 2] = 5.0  # a positive logit of a previous token, divided by the penalty below: inf, then inf - inf
    params = [
        GenerationParams(),
        GenerationParams(do_sample=True, repetition_penalty=1e-300, seed=1),
        GenerationParams(),
    ]
    generators = [None, torch.Generator().manual_seed(1), None]
    chosen = choose_tokens(logits, params, lambda row: [1, 2], generators)  # type: ignore[arg-type]
    assert chosen[0] == (int(logits[0].argmax()), pytest.approx(float(logits[0].log_softmax(0).max())))
    assert chosen[1] is None and chosen[2] is None


def test_a_row_whose_sampling_fails_fails_alone(engine: Engine) -> None:
    probe: Probe = engine.tokenizer  # type: ignore[assignment]
    # Straight to the engine: the HTTP layer and the gateway refuse this temperature before it gets here.
    bad = GenerationParams(max_new_tokens=4, do_sample=True, temperature=float("nan"), seed=1)

    async def body() -> tuple[Any, Any]:
        good: AsyncIterator[Any] = engine.generate("My pet is a", RUNNING, None)
        await anext(good)
        probe.decode_free.clear()  # the good row stays mid-generation until the bad one is waiting
        failing = asyncio.create_task(anext(engine.generate("My home city is", bad, None)))
        # Waiting, or already admitted at the boundary after a decode that began before the hold: either way
        # the good row is still mid-generation when the bad one joins it.
        await _until(lambda: engine.stats.queue_length == 1 or failing.done())
        probe.decode_free.set()  # at the next token boundary it joins the good row's batch, and fails
        with pytest.raises(GenerationFailed, match="sampling") as failed:
            await failing
        items = [item async for item in good]  # and the good row runs to its end
        return failed.value, items

    error, items = serve(engine, body)
    assert lorax_error(error) == (424, "generation") and "nan" not in error.message.lower()
    assert all(isinstance(item, TokenInfo) for item in items[:-1])
    assert isinstance(items[-1], GenerationResult) and items[-1].generated_tokens == RUNNING.max_new_tokens
    assert engine.stats.batch_size == 0


def test_a_long_prompt_is_encoded_off_the_event_loop(engine: Engine) -> None:
    probe: Probe = engine.tokenizer  # type: ignore[assignment]

    async def body() -> tuple[bool, BaseException | None]:
        stream: AsyncIterator[Any] = engine.generate("My pet is a", RUNNING, None)
        await anext(stream)
        long = asyncio.create_task(anext(engine.generate(LONG_PROMPT, GenerationParams(), None)))
        await asyncio.to_thread(probe.encoding.wait, DEADLOCK_BREAK_S)
        steps = probe.decodes
        await _until(lambda: probe.decodes >= steps + 3)  # the stream in flight advances meanwhile
        pending = not long.done()
        probe.release.set()
        await asyncio.wait([long])
        await stream.aclose()
        return pending, long.exception()

    pending, error = serve(engine, body)
    assert pending, "the stream only advanced once the long prompt's encoding had finished"
    assert isinstance(error, ValidationFailed) and "max_input_length" in error.message


def test_a_prompt_over_the_character_cap_never_reaches_the_tokenizer(engine: Engine) -> None:
    probe: Probe = engine.tokenizer  # type: ignore[assignment]
    calls = len(probe.encoded)

    async def body() -> None:
        with pytest.raises(ValidationFailed, match="max_input_chars") as refused:
            await anext(engine.generate("x" * (MAX_INPUT_CHARS + 1), GenerationParams(), None))
        assert refused.value.code == "input_too_many_chars" and lorax_error(refused.value) == (422, "validation")

    serve(engine, body)
    assert len(probe.encoded) == calls
