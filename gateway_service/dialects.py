"""Where the two backend kinds speak LoRAX's API differently, and the gateway's one reading of each difference:
what an error event means as an HTTP status, how many tokens a stream event carries, which ``model`` a client
sees in OpenAI chunks, and the OpenAI request shapes LoRAX 0.12.1 accepts.

- **Errors.** LoRAX 0.12.1 answers every error of a stream, a 422, an overload or a failed adapter download
  included, as an event ``{"error", "error_type"}`` after its 200 (router/src/server.rs:966-1147, :1610); outside
  a stream the same error has a status (server.rs:1586-1607, types from router/src/infer.rs:1586-1600).
  :func:`error_status` gives that status, so an error that opens a stream can be treated as one.
- **Tokens.** Generation streams (``/generate_stream``): one event per generated token for both kinds, the
  last included. OpenAI streams: LoRAX sends one chunk per generated token, the last carrying the finish
  reason and usage (router/src/lib.rs:1268-1308, :1383-1428); the engine sends one per token with no finish
  reason, an opening chat chunk naming the role, then a closing chunk with the finish reason and usage that is
  no token. A closing chunk's ``usage.completion_tokens`` is the backend's own count and replaces the running
  one; the running one only counts for a stream cut short.
- **Model.** LoRAX's OpenAI chunks say ``"model":"null"`` (lib.rs:1290, :1411); the engine echoes the id it was
  sent. Either way the client sees the adapter name it asked with.
- **OpenAI requests.** LoRAX 0.12.1 takes ``prompt`` as a string and ``stop`` as a list of strings only
  (lib.rs:972-985, :676); anything else is a 422. The engine takes both forms.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest
from .settings import BackendKind

__all__ = [
    "Counter",
    "StreamError",
    "generate_tokens",
    "lorax_openai_fields",
    "model_rewrite",
    "one_prompt",
    "openai_tokens",
    "stream_error",
]

# Generated tokens in one event's data: (tokens it adds, or the stream's whole count when it carries one).
Counter = Callable[[bytes], tuple[int, int | None]]

# LoRAX's status for each error type outside a stream (server.rs:1586-1599; types: infer.rs:1586-1600).
_STATUS_OF_ERROR = {
    "generation": 424,  # adapter download or load failures too (router/src/loader.rs:161-172, :289-293)
    "overloaded": 429,
    "validation": 422,
    "template_error": 422,
    "tool_error": 422,
    "missing_template_variable": 422,
    "incomplete_generation": 500,
}


@dataclass(frozen=True, slots=True)
class StreamError:
    error_type: str
    status: int  # what LoRAX answers this error with outside a stream


def stream_error(data: bytes) -> StreamError | None:
    """The error an event's data carries, if it is one; an unknown or unreadable type is a 500, as LoRAX's own
    catch-alls are."""
    if not data.startswith(b'{"error"'):
        return None
    try:
        error_type = str(json.loads(data)["error_type"])[:64]
    except (ValueError, KeyError, TypeError):
        return StreamError("unknown", 500)
    return StreamError(error_type, _STATUS_OF_ERROR.get(error_type, 500))


def generate_tokens(data: bytes) -> tuple[int, int | None]:
    """``/generate_stream``: every token event is one token (LoRAX: server.rs:1008-1096; speculative tokens come
    as events of their own, infer.rs:1411-1444)."""
    return (1 if b'"token":{' in data else 0, None)


def _closing_count(data: bytes) -> int | None:
    """``usage.completion_tokens`` of an OpenAI chunk that carries a finish reason, else None."""
    if b'"finish_reason":null' in data or b'"completion_tokens":' not in data:
        return None
    try:
        chunk = json.loads(data)
        count = chunk["usage"]["completion_tokens"] if chunk["choices"][0]["finish_reason"] else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return count if isinstance(count, int) and count >= 0 else None


def _lorax_chunk_tokens(data: bytes) -> tuple[int, int | None]:
    closing = _closing_count(data)
    return (0, closing) if closing is not None else (1 if b'"choices":[' in data else 0, None)


def _engine_chunk_tokens(data: bytes) -> tuple[int, int | None]:
    closing = _closing_count(data)
    if closing is not None:
        return 0, closing
    # Tokens have no finish reason yet; the opening chat chunk names the role, which token chunks leave null.
    return (1 if b'"finish_reason":null' in data and b'"role":"assistant"' not in data else 0, None)


_OPENAI_COUNTERS: dict[BackendKind, Counter] = {
    BackendKind.LORAX: _lorax_chunk_tokens,
    BackendKind.ENGINE: _engine_chunk_tokens,
}


def openai_tokens(kind: BackendKind) -> Counter:
    return _OPENAI_COUNTERS[kind]


# The chunk's top-level ``model`` (the first key named so: id, object and created come before it, and a quote
# inside a string is escaped, so no text can look like the key), compact or with Python's default spacing.
_MODEL = re.compile(rb'"model": ?"(?:[^"\\]|\\.)*"')


def model_rewrite(shown: str) -> Callable[[bytes], bytes]:
    """Put ``shown`` (the adapter name the client asked with) where a chunk names its model, whatever the
    backend wrote there."""
    value = b'"model":' + json.dumps(shown).encode()

    def rewrite(event: bytes) -> bytes:
        return _MODEL.sub(lambda _: value, event, count=1)

    return rewrite


def one_prompt(prompt: str | list[str]) -> None:
    """Refuse several prompts in one completion request: no backend serves them (LoRAX 0.12.1 takes a string,
    lib.rs:974; the engine a list of one at most)."""
    if isinstance(prompt, list) and len(prompt) != 1:
        raise InvalidRequest(
            f"`prompt`: a list of {len(prompt)} prompts; one prompt per request (a string, or a list of one string)"
        )


def lorax_openai_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI body in the forms LoRAX 0.12.1 takes: a list of one prompt becomes the string, a string ``stop``
    a list of one (lib.rs:974, :985, :676)."""
    prompt, stop = fields.get("prompt"), fields.get("stop")
    changed = dict(fields)
    if isinstance(prompt, list) and len(prompt) == 1:
        changed["prompt"] = prompt[0]
    if isinstance(stop, str):
        changed["stop"] = [stop]
    return changed
