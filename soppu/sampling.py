"""The limits on a generation request's sampling parameters, and the one check over them.

The engine (``inference_service``) refuses what :func:`sampling_problems` reports with a 422, and the gateway
runs the same check at its edge before forwarding, so a value a backend could not sample with (upstream LoRAX
included) never reaches one. Both answer with the first problem, which names the field and the value.

LoRAX's own rules (its router's ``validation.rs``) are kept where it states one: ``top_p`` in (0, 1],
``top_k`` and ``repetition_penalty`` strictly positive, frequency and presence penalties in [-2, 2], a ``seed``
that fits an unsigned 64-bit integer, ``max_new_tokens`` that fits an unsigned 32-bit one, ``top_k`` a signed
32-bit one, ``temperature`` strictly positive. The finite windows for ``repetition_penalty`` and the upper one for
``temperature`` are ours: sampling divides the logits by them, so a value like ``1e-300`` turns float32 logits
into infinities and the softmax into NaNs. A temperature below ``min_temperature`` is accepted, as LoRAX accepts
it, and sampled at ``min_temperature`` (:func:`sampling_temperature`, vLLM's rule): the distribution is as good as
greedy either way. ``temperature: 0`` stays allowed and means greedy, as LoRAX's OpenAI routes treat it.

Stdlib only: the gateway's image has no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "SAMPLING_FIELDS",
    "SAMPLING_LIMITS",
    "SamplingLimits",
    "SamplingProblem",
    "sampling_problems",
    "sampling_temperature",
]


@dataclass(frozen=True, slots=True)
class SamplingLimits:
    # Sampling raises a smaller temperature to this (as vLLM does): logits / 1e-300 overflow float32.
    min_temperature: float = 1e-2
    max_temperature: float = 100.0  # above this the distribution is uniform noise for any model
    min_repetition_penalty: float = 1e-2
    max_repetition_penalty: float = 100.0
    max_abs_penalty: float = 2.0  # frequency_penalty, presence_penalty (LoRAX, as OpenAI)
    max_top_k: int = 2**31 - 1  # LoRAX parses top_k as i32
    max_seed: int = 2**64 - 1  # LoRAX parses seed as u64; torch's manual_seed takes the same range
    max_new_tokens: int = 2**32 - 1  # LoRAX parses max_new_tokens as u32
    max_best_of: int = 2**31 - 1


SAMPLING_LIMITS = SamplingLimits()
_SHOWN_CHARS = 40

# The request keys the check reads (LoRAX's names); anything else in the mapping is ignored.
SAMPLING_FIELDS: tuple[str, ...] = (
    "temperature",
    "top_p",
    "typical_p",
    "top_k",
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "max_new_tokens",
    "best_of",
)


@dataclass(frozen=True, slots=True)
class SamplingProblem:
    field: str
    value: object
    why: str

    def describe(self, prefix: str = "") -> str:
        """``\\`parameters.top_p\\`=1.5: must be > 0 and <= 1``, with ``prefix`` before the field name."""
        shown = repr(self.value)
        if len(shown) > _SHOWN_CHARS:  # a 4,000-digit integer is not worth echoing whole
            shown = shown[:_SHOWN_CHARS] + "..."
        return f"`{prefix}{self.field}`={shown}: {self.why}"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _within(value: float, low: float, high: float, *, low_open: bool = False) -> bool:
    above = value > low if low_open else value >= low
    return math.isfinite(value) and above and value <= high


def _integer_problem(field: str, value: object, low: int, high: int) -> SamplingProblem | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return SamplingProblem(field, value, "must be an integer")
    if not low <= value <= high:
        return SamplingProblem(field, value, f"must be >= {low} and <= {high}")
    return None


def _problem(field: str, value: object, limits: SamplingLimits) -> SamplingProblem | None:
    if field in ("top_k", "seed", "max_new_tokens", "best_of"):
        low, high = {
            "top_k": (1, limits.max_top_k),
            "seed": (0, limits.max_seed),
            "max_new_tokens": (1, limits.max_new_tokens),
            "best_of": (1, limits.max_best_of),
        }[field]
        return _integer_problem(field, value, low, high)
    if not _is_number(value):
        return SamplingProblem(field, value, "must be a number")
    try:
        number = float(value)  # type: ignore[arg-type]
    except OverflowError:  # an integer too large for a float
        number = math.inf
    if field == "temperature":
        if number == 0:
            return None  # greedy
        if not _within(number, 0.0, limits.max_temperature, low_open=True):
            return SamplingProblem(field, value, f"must be 0 (greedy) or > 0 and <= {limits.max_temperature}")
    elif field in ("top_p", "typical_p"):
        if not _within(number, 0.0, 1.0, low_open=True):
            return SamplingProblem(field, value, "must be > 0 and <= 1")
    elif field == "repetition_penalty":
        if not _within(number, limits.min_repetition_penalty, limits.max_repetition_penalty):
            why = f"must be >= {limits.min_repetition_penalty} and <= {limits.max_repetition_penalty}"
            return SamplingProblem(field, value, why)
    elif not _within(number, -limits.max_abs_penalty, limits.max_abs_penalty):  # the two penalties
        return SamplingProblem(field, value, f"must be >= {-limits.max_abs_penalty} and <= {limits.max_abs_penalty}")
    return None


def sampling_problems(values: Mapping[str, object], limits: SamplingLimits = SAMPLING_LIMITS) -> list[SamplingProblem]:
    """Every sampling parameter in ``values`` (LoRAX's names; ``None`` means unset) outside ``limits``, in
    :data:`SAMPLING_FIELDS` order. Empty when the request is fine. Whether the server supports a knob at all
    (``best_of`` > 1, ``typical_p``) is the server's own question, not this one."""
    problems = []
    for field in SAMPLING_FIELDS:
        value = values.get(field)
        if value is not None:
            problem = _problem(field, value, limits)
            if problem is not None:
                problems.append(problem)
    return problems


def sampling_temperature(temperature: float, limits: SamplingLimits = SAMPLING_LIMITS) -> float:
    """The temperature a sampler divides the logits by: ``temperature``, raised to ``limits.min_temperature``."""
    return max(float(temperature), limits.min_temperature)
