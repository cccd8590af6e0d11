"""The gateway's readings of what backends send, in-process on the bytes LoRAX 0.12.1 and the engine really write:
event data with or without the space, error events and their statuses, tokens per event, the ``model`` rewrite,
OpenAI bodies for LoRAX, and the health check's choice of route and timeout."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway_service.dialects import (
    Counter,
    StreamError,
    generate_tokens,
    lorax_openai_fields,
    model_rewrite,
    one_prompt,
    openai_tokens,
    stream_error,
)
from gateway_service.errors import InvalidRequest
from gateway_service.routing import BackendPool
from gateway_service.settings import BackendConfig, BackendKind
from gateway_service.sse import event_data

# As LoRAX 0.12.1 writes them (serde's compact JSON; router/src/lib.rs:1268-1308, :1383-1428)
LORAX_COMPLETION = [
    b'{"id":"null","object":"text_completion","created":0,"model":"null","choices":[{"index":0,"text":"a",'
    b'"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":0,"total_tokens":0,"completion_tokens":0}}',
    b'{"id":"null","object":"text_completion","created":0,"model":"null","choices":[{"index":0,"text":"b",'
    b'"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":3,"total_tokens":5,"completion_tokens":2}}',
    b"[DONE]",
]
LORAX_CHAT = [
    b'{"id":"null","object":"chat.completion.chunk","created":0,"model":"null","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":""},"finish_reason":null}]}',  # a token whose text is still empty
    b'{"id":"null","object":"chat.completion.chunk","created":0,"model":"null","choices":[{"index":0,'
    b'"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"total_tokens":5,"completion_tokens":2}}',
    b"[DONE]",
]
# As the engine writes them (inference_service/routes/openai.py): an opening chunk, tokens, a closing chunk.
ENGINE_CHAT = [
    b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"exports/u/default/v00000001","choices":'
    b'[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}',
    b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"exports/u/default/v00000001","choices":'
    b'[{"index":0,"delta":{"role":null,"content":"a"},"logprobs":null,"finish_reason":null}],"usage":null}',
    b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"exports/u/default/v00000001","choices":'
    b'[{"index":0,"delta":{"role":null,"content":""},"logprobs":null,"finish_reason":null}],"usage":null}',
    b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"exports/u/default/v00000001","choices":'
    b'[{"index":0,"delta":{"role":null,"content":null},"logprobs":null,"finish_reason":"length"}],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}',
    b"[DONE]",
]


def _count(counter: Counter, events: list[bytes]) -> int:
    tokens = 0
    for data in events:
        added, total = counter(data)
        tokens = total if total is not None else tokens + added
    return tokens


def test_event_data_is_read_with_or_without_the_space() -> None:
    assert event_data(b'data:{"a":1}\n\n') == event_data(b'data: {"a":1}\n\n') == b'{"a":1}'
    assert event_data(b"data:[DONE]\n\n") == b"[DONE]"
    assert event_data(b"data:  two spaces\n\n") == b" two spaces"  # only one space belongs to the framing
    assert event_data(b":\n\n") is None  # LoRAX's keep-alive comment
    assert event_data(b"event: x\ndata:a\ndata: b\n\n") == b"a\nb"


def test_error_events_get_the_status_lorax_gives_them_outside_a_stream() -> None:
    cases = {
        b'{"error":"Model is overloaded","error_type":"overloaded"}': StreamError("overloaded", 429),
        b'{"error":"Request failed during generation: x","error_type":"generation"}': StreamError("generation", 424),
        b'{"error":"Input validation error: x","error_type":"validation"}': StreamError("validation", 422),
        b'{"error": "Incomplete generation", "error_type": "incomplete_generation"}': StreamError(
            "incomplete_generation", 500
        ),
        b'{"error":"x","error_type":"something_new"}': StreamError("something_new", 500),
        b'{"error":"x"}': StreamError("unknown", 500),
    }
    for data, expected in cases.items():
        assert stream_error(data) == expected, data
    assert stream_error(b'{"token":{"id":1,"text":"{\\"error\\"","logprob":0.0,"special":false}}') is None
    assert stream_error(LORAX_COMPLETION[0]) is None and stream_error(b"[DONE]") is None


def test_tokens_per_stream_match_the_backends_own_count() -> None:
    assert _count(openai_tokens(BackendKind.LORAX), LORAX_COMPLETION) == 2
    assert _count(openai_tokens(BackendKind.LORAX), LORAX_CHAT) == 2
    assert _count(openai_tokens(BackendKind.LORAX), LORAX_CHAT[:1]) == 1  # cut short: the chunks seen
    assert _count(openai_tokens(BackendKind.ENGINE), ENGINE_CHAT) == 2
    assert _count(openai_tokens(BackendKind.ENGINE), ENGINE_CHAT[:3]) == 2  # cut short: not the opening chunk
    token = b'{"token":{"id":5,"text":"a","logprob":-0.1,"special":false,"skipped":false},"generated_text":null,'
    assert _count(generate_tokens, [token + b'"details":null}', b'{"error":"x","error_type":"generation"}']) == 1


def test_the_client_sees_the_model_it_asked_for() -> None:
    rewrite = model_rewrite("my-adapter")
    assert rewrite(b"data:" + LORAX_CHAT[0]).count(b'"model":"my-adapter"') == 1
    assert b'"model":"my-adapter"' in rewrite(b"data: " + ENGINE_CHAT[1])
    spaced = b'data: {"id": "x", "model": "null", "choices": []}'  # Python's default spacing
    assert rewrite(spaced) == b'data: {"id": "x", "model":"my-adapter", "choices": []}'
    text = b'data:{"id":"null","choices":[{"text":"say \\"model\\":\\"x\\""}]}'
    assert rewrite(text) == text  # no model key: a quote inside a text is escaped


def test_openai_bodies_for_lorax_take_its_forms() -> None:
    fields = {"prompt": ["one"], "stop": "x", "max_tokens": 3}
    assert lorax_openai_fields(fields) == {"prompt": "one", "stop": ["x"], "max_tokens": 3}
    assert fields == {"prompt": ["one"], "stop": "x", "max_tokens": 3}  # the engine's body is left as it came
    assert lorax_openai_fields({"messages": [], "stop": ["a", "b"]}) == {"messages": [], "stop": ["a", "b"]}
    one_prompt("one")
    one_prompt(["one"])
    for several in ([], ["one", "two"]):
        with pytest.raises(InvalidRequest, match=f"a list of {len(several)} prompts"):
            one_prompt(several)


def _checked(answers: dict[str, int]) -> tuple[bool, str | None, list[tuple[str, float]]]:
    """Run one health check against a backend answering ``answers`` (path -> status); return healthy, the model id
    learned, and each request's path and read timeout."""
    asked: list[tuple[str, float]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append((request.url.path, request.extensions["timeout"]["read"]))
        status = answers[request.url.path]
        return httpx.Response(status, json={"model_id": "base-x"} if request.url.path == "/info" else None)

    pool = BackendPool([BackendConfig(url="http://lorax:80", kind=BackendKind.LORAX)], 8, 1.25)

    async def run() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            await pool.check(client, pool.backends[0], 1.0, 30.0)

    asyncio.run(run())
    return pool.backends[0].healthy, pool.backends[0].model_id, asked


def test_health_is_checked_on_info_and_on_health_only_without_it() -> None:
    assert _checked({"/info": 200, "/health": 500}) == (True, "base-x", [("/info", 1.0)])
    assert _checked({"/info": 503, "/health": 200}) == (False, None, [("/info", 1.0)])
    for missing in (404, 405):
        assert _checked({"/info": missing, "/health": 200}) == (True, None, [("/info", 1.0), ("/health", 30.0)])
        assert _checked({"/info": missing, "/health": 500})[0] is False
