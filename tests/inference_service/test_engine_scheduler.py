"""The scheduler's decisions, without a model; and the one mapping from the engine's errors to HTTP."""

from __future__ import annotations

import pytest

from inference_service.engine import (
    AdapterLoadFailed,
    AdapterRefused,
    EngineError,
    GenerationFailed,
    GenerationParams,
    Overloaded,
    ValidationFailed,
)
from inference_service.engine.scheduler import Request, Scheduler
from inference_service.errors import error_body, lorax_error

EOS = 2


def _request(max_new_tokens: int = 3, ignore_eos: bool = False) -> Request:
    return Request([1, 5], GenerationParams(max_new_tokens=max_new_tokens, ignore_eos_token=ignore_eos), None)


def test_waiting_requests_join_as_the_batch_has_room_then_the_batch_decodes() -> None:
    s: Scheduler[Request] = Scheduler(max_batch_size=2, max_queue=3, eos_token_id=EOS)
    assert s.schedule() is None
    requests = [_request() for _ in range(3)]
    for r in requests:
        s.add(r)
    assert s.queue_full
    step = s.schedule()
    assert step is not None and step.admit == requests[:2]  # the oldest first, as many as fit
    assert s.admitted(step.admit) == range(0, 2) and requests[0].admitted_at > 0
    step = s.schedule()
    assert step is not None and step.admit == []  # full batch: decode; the third waits
    assert s.remove({0}) == [1] and s.running == [requests[1]]
    step = s.schedule()
    assert step is not None and step.admit == [requests[2]]


def test_cancelled_requests_leave_the_queue_and_the_batch() -> None:
    s: Scheduler[Request] = Scheduler(max_batch_size=4, max_queue=4, eos_token_id=EOS)
    running, waiting = [_request(), _request(), _request()], _request()
    for r in running:
        s.add(r)
    s.admitted(s.schedule().admit)  # type: ignore[union-attr]
    assert s.drop_cancelled() is None
    s.add(waiting)
    running[1].cancelled = waiting.cancelled = True
    assert s.drop_cancelled() == [0, 2] and s.running == [running[0], running[2]] and not s.waiting


@pytest.mark.parametrize(
    ("token", "generated", "stopped", "ignore_eos", "reason"),
    [
        (EOS, 1, True, False, "eos_token"),  # the end-of-sequence token wins over a stop sequence
        (EOS, 1, False, True, None),
        (7, 1, True, False, "stop_sequence"),
        (7, 3, False, False, "length"),
        (7, 2, False, False, None),
    ],
)
def test_a_row_finishes_on_eos_a_stop_sequence_or_its_budget(
    token: int, generated: int, stopped: bool, ignore_eos: bool, reason: str | None
) -> None:
    s: Scheduler[Request] = Scheduler(max_batch_size=1, max_queue=1, eos_token_id=EOS)
    r = _request(max_new_tokens=3, ignore_eos=ignore_eos)
    r.generated = [7] * (generated - 1) + [token]
    assert s.finish_reason(r, token, stopped=stopped) == reason


@pytest.mark.parametrize(
    ("error", "status", "error_type"),
    [
        (ValidationFailed("x", code="input_too_long"), 422, "validation"),
        (AdapterRefused("x"), 403, "adapter_refused"),
        (AdapterLoadFailed("x"), 424, "generation"),
        (Overloaded("x"), 429, "overloaded"),
        (GenerationFailed("x"), 424, "generation"),
        (EngineError("x"), 500, "incomplete_generation"),
    ],
)
def test_each_engine_error_maps_to_loraxs_status_and_error_type(
    error: EngineError, status: int, error_type: str
) -> None:
    assert lorax_error(error) == (status, error_type)
    assert error_body(error) == {"error": "x", "error_type": error_type}
