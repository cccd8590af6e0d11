"""The fake LoRAX's validation of a parsed request (router/src/validation.rs:196-410, tag ``v0.12.1``; paths
relative to its tree; none of its code is copied): everything checked before generation, in LoRAX's order, each
refusal a :class:`~tests.lorax_contract.fake_lorax_schema.LoraxError` ``validation`` (422, or an in-stream event
after HTTP 200). Parsing the body is :mod:`tests.lorax_contract.fake_lorax_schema`'s."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tests.lorax_contract.fake_lorax_schema import GenerateRequest, LoraxError

__all__ = ["Limits", "check_length", "check_parameters", "sampling_on"]


@dataclass(frozen=True)
class Limits:
    """The router's limits (launcher flags of the same names)."""

    max_input_length: int
    max_total_tokens: int
    max_stop_sequences: int = 4  # launcher/src/main.rs:410 default
    max_best_of: int = 2  # launcher/src/main.rs:402 default


def check_parameters(request: GenerateRequest, limits: Limits) -> None:
    """validation.rs:226-349, in its order: everything that needs no tokenizer. Raises :class:`LoraxError`."""
    p = request.parameters
    fail = LoraxError.validation
    if p["merged_adapters"] is not None and p["adapter_id"] is not None:  # validation.rs:228-230
        raise fail("at most one of `adapter_id` or `adapters` may be provided")
    best_of = p["best_of"] if p["best_of"] is not None else 1
    sampling = any(p[k] is not None for k in ("temperature", "top_k", "top_p", "typical_p")) or p["do_sample"]
    if best_of > 1 and not sampling:  # validation.rs:244-254
        raise fail("you must use sampling when `best_of` is > 1")
    temperature = 1.0 if p["temperature"] is None else p["temperature"]
    if temperature < 0.0:  # validation.rs:256-259 (NaN passes, as in Rust)
        raise fail("`temperature` must be non-negative")
    if (1.0 if p["repetition_penalty"] is None else p["repetition_penalty"]) <= 0.0:  # validation.rs:261-264
        raise fail("`repetition_penalty` must be strictly positive")
    for name in ("frequency_penalty", "presence_penalty"):  # validation.rs:266-274
        value = 0.0 if p[name] is None else p[name]
        if not -2.0 <= value <= 2.0:
            raise fail(f"`{name}` must be >= -2.0 and <= 2.0")
    if p["top_p"] is not None and (p["top_p"] <= 0.0 or p["top_p"] > 1.0):  # validation.rs:278-285
        raise fail("`top_p` must be > 0.0 and < 1.0")  # sic: 1.0 itself passes
    if p["typical_p"] is not None and (p["typical_p"] <= 0.0 or p["typical_p"] >= 1.0):  # validation.rs:287-294
        raise fail("`typical_p` must be > 0.0 and < 1.0")
    if p["top_k"] is not None and p["top_k"] <= 0:  # validation.rs:296-303
        raise fail("`top_k` must be strictly positive")
    if p["return_k_alternatives"] is not None and p["return_k_alternatives"] <= 0:  # validation.rs:305-312
        raise fail("`return_k_alternatives` must be strictly positive")
    if p["max_new_tokens"] == 0:  # validation.rs:314-316
        raise fail("`max_new_tokens` must be strictly positive")
    if len(p["stop"]) > limits.max_stop_sequences:  # validation.rs:318-323
        raise fail(f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(p['stop'])}")
    if p["seed"] is not None and best_of > 1:  # validation.rs:326-334
        raise fail("`seed` must not be set when `best_of` > 1")
    if not request.inputs:  # validation.rs:336-339
        raise fail("`inputs` cannot be empty")
    truncate = p["truncate"]
    if truncate is not None and (truncate == 0 or truncate > limits.max_input_length):  # validation.rs:341-349
        raise fail(f"`truncate` must be strictly positive and less than {limits.max_input_length}. Given: {truncate}")


def check_length(input_length: int, max_new_tokens: int | None, limits: Limits) -> int:
    """validation.rs:128-150 and 387-388: the token budget; returns the effective ``max_new_tokens`` (a missing one
    is the rest of ``max_total_tokens``)."""
    if max_new_tokens is not None and input_length + max_new_tokens > limits.max_total_tokens:
        raise LoraxError.validation(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {input_length} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
        )
    if input_length > limits.max_input_length:
        raise LoraxError.validation(
            f"`inputs` must have less than {limits.max_input_length} tokens. Given: {input_length}"
        )
    return max_new_tokens if max_new_tokens is not None else limits.max_total_tokens - input_length


def sampling_on(p: Mapping[str, Any]) -> bool:
    """The server's choice of sampler (server/lorax_server/utils/tokens.py:73-94): sampling when ``do_sample`` or a
    warper is on, and never at temperature 0."""
    temperature = p["temperature"]
    warpers = (
        (temperature is not None and temperature not in (0.0, 1.0))
        or (p["top_k"] is not None and p["top_k"] != 0)
        or (p["top_p"] is not None and p["top_p"] < 1.0)
        or (p["typical_p"] is not None and p["typical_p"] < 1.0)
    )
    return bool((p["do_sample"] or warpers) and temperature != 0.0 and not _nan(temperature))


def _nan(value: float | None) -> bool:
    return value is not None and math.isnan(value)
