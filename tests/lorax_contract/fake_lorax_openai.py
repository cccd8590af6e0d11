"""The fake LoRAX's OpenAI routes (router/src/server.rs and lib.rs, tag ``v0.12.1``): ``/v1/completions`` and
``/v1/chat/completions``, one chunk per token with ``"model":"null"``, the chat template rendered from the model's
tokenizer config, refusals before the stream starts."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.lorax_contract.fake_lorax_responses import FINISH_OPENAI, VERSION, sse
from tests.lorax_contract.fake_lorax_routes import generate_json, read_body, stream_response
from tests.lorax_contract.fake_lorax_schema import (
    GenerateRequest,
    LoraxError,
    parse_chat,
    parse_completion,
    parse_generate,
)
from tests.lorax_contract.fake_lorax_state import FakeLorax


def _openai_model(fake: FakeLorax, model: str) -> str:
    return "" if model == fake.model_id else model  # server.rs:157-161, 243-247


def _u32(value: int | None) -> int | None:
    return None if value is None else value & 0xFFFFFFFF  # lib.rs:840, 1218: `max_tokens as u32` wraps


def _completion_stream_chunk(event: dict[str, Any]) -> dict[str, Any]:
    """lib.rs:1268-1308."""
    details = event["details"]
    finish = FINISH_OPENAI[details["finish_reason"]] if details else None
    prompt, completion = (details["prompt_tokens"], details["generated_tokens"]) if details else (0, 0)
    return {
        "id": "null",
        "object": "text_completion",
        "created": 0,
        "model": "null",
        "choices": [
            {
                "index": 0,
                "text": "" if finish == "stop" else event["token"]["text"],
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion},
    }


async def completions(fake: FakeLorax, request: Request) -> Response:
    """server.rs:146-206 with lib.rs:1199-1234 (the request) and 1236-1266 (the response)."""
    c = parse_completion(await read_body(request))
    parameters = {
        **parse_generate({"inputs": ""}, compat=False).parameters,
        "adapter_id": _openai_model(fake, c["model"]),
        "adapter_source": c["adapter_source"],
        "api_token": c["api_token"],
        "best_of": c["best_of"],
        "temperature": c["temperature"],
        "repetition_penalty": c["repetition_penalty"],
        "frequency_penalty": c["frequency_penalty"],
        "presence_penalty": c["presence_penalty"],
        "top_k": c["top_k"],
        "top_p": c["top_p"],
        "do_sample": c["n"] is not None,  # sic, lib.rs:1217
        "max_new_tokens": _u32(c["max_tokens"]),
        "ignore_eos_token": bool(c["ignore_eos_token"]),
        "return_full_text": bool(c["echo"]),  # None becomes the compat default, false
        "stop": c["stop"],
        "details": True,
        "decoder_input_details": c["logprobs"] is not None,
        "seed": c["seed"],
    }
    req = GenerateRequest(c["prompt"], parameters, bool(c["stream"]))
    if req.stream:
        return stream_response(fake, req, _completion_stream_chunk, sse("[DONE]"))
    body, headers = await generate_json(fake, req)
    details = body.get("details") or {}
    prompt, completion = details.get("prompt_tokens", 0), details.get("generated_tokens", 0)
    finish = FINISH_OPENAI[details["finish_reason"]] if details else None
    response = {
        "id": "null",
        "object": "text_completion",
        "created": 0,
        "model": "null",
        "choices": [{"index": 0, "text": body["generated_text"], "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion},
    }
    return JSONResponse(response, headers=headers)


def _chat_stream_chunk(event: dict[str, Any]) -> dict[str, Any]:
    """lib.rs:1383-1428: the last chunk of an eos_token ending has an empty delta; usage only on the last."""
    details = event["details"]
    finish = FINISH_OPENAI[details["finish_reason"]] if details else None
    delta = {} if finish == "stop" else {"role": "assistant", "content": event["token"]["text"]}
    chunk: dict[str, Any] = {
        "id": "null",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "null",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if details:
        prompt, completion = details["prompt_tokens"], details["generated_tokens"]
        chunk["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion}
    return chunk


async def chat_completions(fake: FakeLorax, request: Request) -> Response:
    """server.rs:231-387 with lib.rs:722-857 (the request). Template and tool errors come before any stream."""
    c, messages = parse_chat(await read_body(request))
    model = _openai_model(fake, c["model"])
    if c["response_format"] is not None and c["tools"] is not None:  # server.rs:406-410
        raise LoraxError("Tool error: Response format and tools are mutually exclusive", "tool_error", 422)
    if c["tools"] is not None:
        raise LoraxError("Tool error: this fake LoRAX does not reproduce tools", "tool_error", 422)
    tokenizer = fake.engine.tokenizer
    if not getattr(tokenizer, "chat_template", None):  # infer.rs:387-389
        raise LoraxError.template("template not found")
    try:  # LoRAX renders with minijinja (infer.rs:97-145); transformers' jinja2 agrees on plain templates
        inputs = str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    except Exception as e:
        raise LoraxError.template(str(e)) from e
    greedy = c["temperature"] == 0.0  # lib.rs:806-810
    parameters = {
        **parse_generate({"inputs": ""}, compat=False).parameters,
        "adapter_id": model or None,
        "adapter_source": c["adapter_source"],
        "api_token": c["api_token"],
        "best_of": c["n"],
        "temperature": None if greedy else c["temperature"],
        "repetition_penalty": c["repetition_penalty"],
        "frequency_penalty": c["frequency_penalty"],
        "presence_penalty": c["presence_penalty"],
        "top_k": c["top_k"],
        "top_p": c["top_p"],
        "do_sample": not greedy,
        "max_new_tokens": _u32(c["max_tokens"]),
        "return_full_text": False,
        "stop": c["stop"],
        "details": True,
        "seed": c["seed"],
        "ignore_eos_token": bool(c["ignore_eos_token"]),
    }
    req = GenerateRequest(inputs, parameters, bool(c["stream"]), add_special_tokens=False)
    if req.stream:
        return stream_response(fake, req, _chat_stream_chunk, sse("[DONE]"))
    body, headers = await generate_json(fake, req)
    details = body["details"]
    texts = [body["generated_text"]] + [s["generated_text"] for s in details.get("best_of_sequences", [])]
    finish = FINISH_OPENAI[details["finish_reason"]]
    prompt, completion = details["prompt_tokens"], details["generated_tokens"]
    response = {
        "id": "null",
        "object": "text_completion",
        "created": int(time.time()),
        "model": fake.model_id,  # server.rs:242, 376-382: the served model, not the request's
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            for i, text in enumerate(texts)
        ],
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion},
        "system_fingerprint": f"{VERSION}-native",  # server.rs:249, no DOCKER_LABEL
    }
    return JSONResponse(response, headers=headers)
