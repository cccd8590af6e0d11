"""The shapes of the fake LoRAX's answers (router/src/lib.rs and server.rs, tag ``v0.12.1``): tokens and details,
the adapter and timing headers, events written ``data:{...}`` with no space (serde's null for a NaN), and errors as
``{"error", "error_type"}`` with LoRAX's status."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from starlette.responses import JSONResponse

from inference_service.engine import TokenInfo
from tests.lorax_contract.fake_lorax_adapters import BASE_MODEL_ADAPTER_ID
from tests.lorax_contract.fake_lorax_schema import GenerateRequest, LoraxError
from tests.lorax_contract.fake_lorax_state import FakeLorax, GenerationRun

VERSION = "0.12.1"
FINISH_OPENAI = {"length": "length", "eos_token": "stop", "stop_sequence": "content_filter"}  # lib.rs:1430-1438


# --- response shapes (router/src/lib.rs) -------------------------------------------------------------------------


def token_json(t: TokenInfo) -> dict[str, Any]:
    # lib.rs:404-419: alternative_tokens is left out when None.
    return {"id": t.id, "text": t.text, "logprob": t.logprob, "special": t.special, "skipped": False}


def full_text(request: GenerateRequest, text: str) -> str:
    return request.inputs + text if request.parameters["return_full_text"] else text  # server.rs:612-615, 828-832


def details_json(request: GenerateRequest, run: GenerationRun, others: list[GenerationRun] | None) -> dict[str, Any]:
    """lib.rs:459-475 (Details) with lib.rs:445-457 (BestOfSequence)."""
    result = run.result
    assert result is not None
    details: dict[str, Any] = {
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "generated_tokens": result.generated_tokens,
        "skipped_tokens": 0,
        "seed": result.seed,
        "prefill": [{"id": t.id, "text": t.text, "logprob": t.logprob} for t in result.prefill],
        "tokens": [token_json(t) for t in run.tokens],
    }
    if others is not None:
        details["best_of_sequences"] = [
            {
                "generated_text": full_text(request, o.result.generated_text),
                "finish_reason": o.result.finish_reason,
                "generated_tokens": o.result.generated_tokens,
                "seed": o.result.seed,
                "prefill": [{"id": t.id, "text": t.text, "logprob": t.logprob} for t in o.result.prefill],
                "tokens": [token_json(t) for t in o.tokens],
            }
            for o in others
            if o.result is not None
        ]
    return details


def adapter_headers(fake: FakeLorax, request: GenerateRequest) -> dict[str, str]:
    """server.rs:780-792 and 950-964: the adapter headers only when an adapter was asked for."""
    p = request.parameters
    headers = {"x-model-id": fake.model_id}
    if p["adapter_id"] and p["adapter_id"] != BASE_MODEL_ADAPTER_ID:
        headers["x-adapter-id"] = p["adapter_id"]
        headers["x-adapter-source"] = p["adapter_source"] or fake.settings.adapter_source
    return headers


def timing_headers(request: GenerateRequest, run: GenerationRun) -> dict[str, str]:
    """server.rs:721-776 (values in milliseconds)."""
    result = run.result
    assert result is not None
    total_ms = int((time.perf_counter() - run.started) * 1000)
    per_token = int(result.inference_s * 1000 / max(result.generated_tokens, 1))
    return {
        "x-compute-type": "gpu+optimized",
        "x-compute-time": str(total_ms),
        "x-compute-characters": str(len(request.inputs)),
        "x-total-time": str(total_ms),
        "x-prompt-tokens": str(result.prompt_tokens),
        "x-generated-tokens": str(result.generated_tokens),
        "x-skipped-tokens": "0",
        "x-total-tokens": str(result.prompt_tokens + result.generated_tokens),
        "x-validation-time": "0",
        "x-queue-time": str(int(result.queue_s * 1000)),
        "x-inference-time": str(int(result.inference_s * 1000)),
        "x-time-per-token": str(per_token),
        "x-time-to-first-token": str(per_token),
        "x-time-per-output-token": str(per_token),
    }


def sse(data: object) -> str:
    """axum's ``Event::json_data``/``data``: ``data:`` and the value with no space, then a blank line."""
    text = data if isinstance(data, str) else json.dumps(json_safe(data), separators=(",", ":"), allow_nan=False)
    return f"data:{text}\n\n"


def json_safe(value: Any) -> Any:
    # serde_json writes a NaN or infinite f32 (a first prefill logprob) as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def error_response(e: LoraxError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)  # server.rs:1586-1607
