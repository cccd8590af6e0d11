"""The fake LoRAX's request side: how LoRAX 0.12.1's router turns a JSON body into a request, and which requests
it refuses before any generation, each rule written from a reading of its source (tag ``v0.12.1``; paths relative
to its tree; none of its code is copied).

Two kinds of refusal, as LoRAX has them:

- **The body does not deserialize** (axum 0.7's ``Json`` extractor over serde, router/src/lib.rs:167-299 for the
  types): 422 with a *plain-text* body ``Failed to deserialize the JSON body into the target type: PATH: MESSAGE``
  (serde_path_to_error's path, serde_json's message without its ``at line L column C`` suffix, which this fake does
  not compute), 400 on a syntax error, 415 without ``Content-Type: application/json``. Unknown fields are ignored
  (no ``deny_unknown_fields``). This is where ``prompt`` must be a string and ``stop`` a list of strings on the
  OpenAI routes (lib.rs:971-1003, 667-720), and ``max_new_tokens`` a non-negative ``u32`` (lib.rs:254-255).
- **Validation** (router/src/validation.rs:196-410; the checks are :mod:`fake_lorax_validation`'s):
  :class:`LoraxError` ``validation``, answered 422 with ``{"error": "Input validation error: ...", "error_type":
  "validation"}`` (server.rs:1586-1607, infer.rs:1564-1600) or, on a stream, as an in-stream event after HTTP 200
  (server.rs:1131-1135).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BodyRejected",
    "GenerateRequest",
    "LoraxError",
    "parse_body",
    "parse_chat",
    "parse_completion",
    "parse_generate",
]


class BodyRejected(Exception):
    """axum's ``JsonRejection``: a status and a plain-text body (axum 0.7 ``extract/rejection.rs``)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class LoraxError(Exception):
    """LoRAX's ``InferError``: its Display text and ``error_type`` (router/src/infer.rs:1564-1600), and the
    status the non-stream routes answer with (server.rs:1586-1607)."""

    def __init__(self, message: str, error_type: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}

    @classmethod
    def validation(cls, why: str) -> LoraxError:
        return cls(f"Input validation error: {why}", "validation", 422)  # infer.rs:1570-1571

    @classmethod
    def generation(cls, why: str) -> LoraxError:
        return cls(f"Request failed during generation: {why}", "generation", 424)  # infer.rs:1566-1567

    @classmethod
    def overloaded(cls) -> LoraxError:
        return cls("Model is overloaded", "overloaded", 429)  # infer.rs:1568-1569

    @classmethod
    def template(cls, why: str) -> LoraxError:
        return cls(f"Failed applying chat template to inputs: {why}", "template_error", 422)  # infer.rs:1574-1575


# --- serde, as far as these bodies need it ---------------------------------------------------------------------


class _SerdeError(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _unexpected(value: object) -> str:
    # serde's ``Unexpected`` as serde_json names JSON values (null is "null", not "unit value").
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    return "sequence" if isinstance(value, list) else "map"


def _invalid_type(path: str, value: object, expected: str) -> _SerdeError:
    return _SerdeError(path, f"invalid type: {_unexpected(value)}, expected {expected}")


_INT_RANGES = {"u32": (0, 2**32 - 1), "u64": (0, 2**64 - 1), "usize": (0, 2**64 - 1), "i32": (-(2**31), 2**31 - 1)}


def _string(path: str, value: object) -> str:
    if not isinstance(value, str):
        raise _invalid_type(path, value, "a string")
    return value


def _bool(path: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _invalid_type(path, value, "a boolean")
    return value


def _float(path: str, value: object) -> float:
    # serde_json gives an integer to an f32 field without complaint.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid_type(path, value, "f32")
    return float(value)


def _integer(kind: str) -> Callable[[str, object], int]:
    def parse(path: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _invalid_type(path, value, kind)
        low, high = _INT_RANGES[kind]
        if not low <= value <= high:
            raise _SerdeError(path, f"invalid value: integer `{value}`, expected {kind}")
        return value

    return parse


def _strings(path: str, value: object) -> list[str]:
    if not isinstance(value, list):
        raise _invalid_type(path, value, "a sequence")
    return [_string(f"{path}[{i}]", item) for i, item in enumerate(value)]


def _anything(_: str, value: object) -> object:
    return value


def _object(path: str, value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid_type(path, value, f"struct {name}")
    return value


def _optional(parse: Callable[[str, object], Any]) -> Callable[[str, object], Any]:
    return lambda path, value: None if value is None else parse(path, value)


_U32, _I32, _U64, _USIZE = _integer("u32"), _integer("i32"), _integer("u64"), _integer("usize")

# (parser, default when absent); ``_REQUIRED`` marks a field without #[serde(default)].
_REQUIRED = object()

# router/src/lib.rs:167-299 (GenerateParameters): every field has #[serde(default)]; merged_adapters is an
# Option without it, which serde still treats as absent-is-None.
_PARAMETERS: dict[str, tuple[Callable[[str, object], Any], object]] = {
    "adapter_id": (_optional(_string), None),
    "adapter_source": (_optional(_string), None),
    "merged_adapters": (_optional(_anything), None),
    "api_token": (_optional(_string), None),
    "best_of": (_optional(_USIZE), None),
    "temperature": (_optional(_float), None),
    "repetition_penalty": (_optional(_float), None),
    "frequency_penalty": (_optional(_float), None),
    "presence_penalty": (_optional(_float), None),
    "top_k": (_optional(_I32), None),
    "top_p": (_optional(_float), None),
    "typical_p": (_optional(_float), None),
    "do_sample": (_bool, False),
    "max_new_tokens": (_optional(_U32), None),
    "ignore_eos_token": (_bool, False),
    "return_full_text": (_optional(_bool), None),
    "stop": (_strings, []),
    "truncate": (_optional(_USIZE), None),
    "watermark": (_bool, False),
    "details": (_bool, False),
    "decoder_input_details": (_bool, False),
    "return_k_alternatives": (_optional(_I32), None),
    "apply_chat_template": (_bool, False),
    "seed": (_optional(_U64), None),
    "response_format": (_optional(_anything), None),
}

# lib.rs:971-1003 (CompletionRequest): no #[serde(default)] on the Options (absent is None all the same).
_COMPLETION: dict[str, tuple[Callable[[str, object], Any], object]] = {
    "model": (_string, _REQUIRED),
    "prompt": (_string, _REQUIRED),
    "suffix": (_optional(_string), None),
    "max_tokens": (_optional(_I32), None),
    "temperature": (_optional(_float), None),
    "top_p": (_optional(_float), None),
    "n": (_optional(_I32), None),
    "stream": (_optional(_bool), None),
    "logprobs": (_optional(_I32), None),
    "echo": (_optional(_bool), None),
    "stop": (_strings, []),
    "presence_penalty": (_optional(_float), None),
    "frequency_penalty": (_optional(_float), None),
    "best_of": (_optional(_I32), None),
    "logit_bias": (_optional(_anything), None),
    "user": (_optional(_string), None),
    "seed": (_optional(_U64), None),
    "repetition_penalty": (_optional(_float), None),
    "top_k": (_optional(_I32), None),
    "ignore_eos_token": (_optional(_bool), None),
    "adapter_source": (_optional(_string), None),
    "api_token": (_optional(_string), None),
}

# lib.rs:667-720 (ChatCompletionRequest).
_CHAT: dict[str, tuple[Callable[[str, object], Any], object]] = {
    "model": (_string, _REQUIRED),
    "messages": (_anything, _REQUIRED),  # checked by _messages
    "temperature": (_optional(_float), None),
    "top_p": (_optional(_float), None),
    "n": (_optional(_I32), None),
    "max_tokens": (_optional(_I32), None),
    "stop": (_strings, []),
    "stream": (_optional(_bool), None),
    "presence_penalty": (_optional(_float), None),
    "frequency_penalty": (_optional(_float), None),
    "logit_bias": (_optional(_anything), None),
    "user": (_optional(_string), None),
    "seed": (_optional(_U64), None),
    "response_format": (_optional(_anything), None),
    "tools": (_optional(_anything), None),
    "tool_choice": (_anything, None),
    "repetition_penalty": (_optional(_float), None),
    "top_k": (_optional(_I32), None),
    "ignore_eos_token": (_optional(_bool), None),
    "adapter_source": (_optional(_string), None),
    "api_token": (_optional(_string), None),
    "tool_prompt": (_optional(_string), None),
    "guideline": (_optional(_string), None),
}


def _fields(
    path: str, raw: object, name: str, spec: Mapping[str, tuple[Callable[[str, object], Any], object]]
) -> dict[str, Any]:
    body = _object(path, raw, name)
    out: dict[str, Any] = {}
    # serde reads the fields in the order of the JSON object, so the first bad one (in the body) is reported.
    for key, value in body.items():
        if key in spec:
            out[key] = spec[key][0](f"{path}.{key}".lstrip("."), value)
    for key, (_, default) in spec.items():
        if key not in out:
            if default is _REQUIRED:
                raise _SerdeError(path, f"missing field `{key}`")
            out[key] = list(default) if isinstance(default, list) else default
    return out


def _messages(raw: object) -> list[dict[str, str]]:
    """lib.rs:598-665: ``role`` a string, ``content`` a string, a list of text/image chunks, or null."""
    if not isinstance(raw, list):
        raise _invalid_type("messages", raw, "a sequence")
    messages = []
    for i, item in enumerate(raw):
        path = f"messages[{i}]"
        message = _object(path, item, "Message")
        if "role" not in message:
            raise _SerdeError(path, "missing field `role`")
        role = _string(f"{path}.role", message["role"])
        content = message.get("content")
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        elif isinstance(content, list) and all(isinstance(c, dict) and c.get("type") == "text" for c in content):
            text = "".join(_string(f"{path}.content", c.get("text")) for c in content)
        else:
            raise _SerdeError(f"{path}.content", "data did not match any variant of untagged enum MessageContent")
        messages.append({"role": role, "content": text})  # TextMessage (lib.rs:647-665)
    return messages


def parse_body(raw: bytes, content_type: str | None) -> object:
    """axum's ``Json`` extractor before the types: 415 without a JSON content type, 400 on bad JSON."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if not (mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))):
        raise BodyRejected(415, "Expected request with `Content-Type: application/json`")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BodyRejected(400, f"Failed to parse the request body as JSON: {e}") from e


def _deserialize(parse: Callable[[], Any]) -> Any:
    try:
        return parse()
    except _SerdeError as e:
        where = f"{e.path}: " if e.path else ""
        raise BodyRejected(422, f"Failed to deserialize the JSON body into the target type: {where}{e.message}") from e


@dataclass
class GenerateRequest:
    """LoRAX's ``GenerateRequest``/``CompatGenerateRequest`` after serde (lib.rs:331-374)."""

    inputs: str
    parameters: dict[str, Any]
    stream: bool = False
    add_special_tokens: bool = True


def parse_generate(body: object, *, compat: bool) -> GenerateRequest:
    """``POST /generate``, ``/generate_stream`` and, with ``compat``, ``POST /`` (with its ``stream`` flag)."""

    def parse() -> GenerateRequest:
        raw = _object("", body, "CompatGenerateRequest" if compat else "GenerateRequest")
        inputs = _string("inputs", raw["inputs"]) if "inputs" in raw else None
        parameters = _fields("parameters", raw.get("parameters", {}), "GenerateParameters", _PARAMETERS)
        stream = _bool("stream", raw["stream"]) if compat and "stream" in raw else False
        if inputs is None:
            raise _SerdeError("", "missing field `inputs`")
        return GenerateRequest(inputs, parameters, stream)

    result: GenerateRequest = _deserialize(parse)
    return result


def parse_completion(body: object) -> dict[str, Any]:
    result: dict[str, Any] = _deserialize(lambda: _fields("", body, "CompletionRequest", _COMPLETION))
    return result


def parse_chat(body: object) -> tuple[dict[str, Any], list[dict[str, str]]]:
    def parse() -> tuple[dict[str, Any], list[dict[str, str]]]:
        fields = _fields("", body, "ChatCompletionRequest", _CHAT)
        return fields, _messages(fields["messages"])

    result: tuple[dict[str, Any], list[dict[str, str]]] = _deserialize(parse)
    return result
