"""The gateway in front of two stub backends that record what they receive (``tests/support/stub_backend.py``): what is
forwarded and what never is, limits (per user, in flight, body size and deadline), retries, stream errors,
cancellation, failover. One backend is declared ``engine``, the other ``lorax``; both answer with the adapter id
they were given."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from lorax.errors import GenerationError

import lorax
from tests.gateway_service.gateway_support import Deployment, publish, start_stub

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _recorded(gw: Deployment) -> list[dict[str, object]]:
    return [r for stub in gw.backends for r in httpx.get(f"{stub.url}/stub/requests").json()]


def _served_by(gw: Deployment, request_id: str) -> int:
    """Which backend (index into gw.backends) received the request with this id."""
    for i, stub in enumerate(gw.backends):
        if stub.proc.poll() is not None:  # stopped by the failover test
            continue
        if any(r["headers"].get("x-request-id") == request_id for r in httpx.get(f"{stub.url}/stub/requests").json()):
            return i
    raise AssertionError(f"no backend received request {request_id}")


def _post(gw: Deployment, user: str, path: str = "/generate", **body: object) -> httpx.Response:
    return httpx.post(f"{gw.url}{path}", json={"inputs": "hello", **body}, headers=gw.headers(user), timeout=30)


def _wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_credentials_are_stripped_and_only_the_gateway_chooses_the_adapter(stub_gateway: Deployment) -> None:
    gw = stub_gateway
    key = gw.keys["u00"]
    headers = {
        "Authorization": f"Bearer {key}",
        "X-API-Key": key,
        "Cookie": "session=secret-cookie",
        "traceparent": TRACEPARENT,
        "tracestate": "vendor=1",
        "x-request-id": "strip-test-1",
    }
    parameters = {"api_token": "secret-token", "adapter_source": "hub", "adapter_id": "default"}
    r = httpx.post(f"{gw.url}/generate", json={"inputs": "hi", "parameters": parameters}, headers=headers)
    assert r.status_code == 200, r.text
    r = httpx.post(
        f"{gw.url}/v1/completions",
        json={"model": "default", "prompt": "hi", "api_token": "secret-token", "user": "tag", "max_tokens": 999},
        headers={**headers, "x-request-id": "strip-test-2"},
    )
    assert r.status_code == 200 and r.json()["model"] == "default", r.text
    seen = {r["headers"].get("x-request-id"): r for r in _recorded(gw)}
    seen = {rid: r for rid, r in seen.items() if rid in ("strip-test-1", "strip-test-2")}
    assert set(seen) == {"strip-test-1", "strip-test-2"}
    dumped = json.dumps(list(seen.values()))
    assert key not in dumped and "secret-token" not in dumped and "secret-cookie" not in dumped
    for request in seen.values():
        assert not {"authorization", "x-api-key", "cookie"} & set(request["headers"])
        assert request["headers"]["traceparent"] == TRACEPARENT
    lorax_params = seen["strip-test-1"]["body"]["parameters"]
    export = str(Path(gw.store.root) / "exports" / "u00" / "default" / "v00000001")  # type: ignore[attr-defined]
    assert lorax_params == {"max_new_tokens": 4, "adapter_id": export, "adapter_source": "local"}
    completion = seen["strip-test-2"]["body"]
    assert completion["model"] == export and completion["max_tokens"] == 16  # the cap
    assert "user" not in completion and "api_token" not in completion


def test_engine_backends_get_the_core_and_lorax_backends_the_export(stub_gateway: Deployment) -> None:
    gw = stub_gateway
    core = "cores/u10/default/v00000002"
    publish(gw.store, "u10", None, 2, core_prefix=core)
    r = _post(gw, "u10")
    assert r.status_code == 200 and r.headers["x-adapter-version"] == "2"
    root = Path(gw.store.root)  # type: ignore[attr-defined]
    backend = _served_by(gw, r.headers["x-request-id"])
    expected = {0: root / core, 1: root / "exports/u10/default/v00000002"}[backend]  # 0: engine, 1: lorax
    assert r.json()["generated_text"] == f"local|{expected}"


def test_a_retired_version_in_the_cache_is_re_resolved_once(stub_gateway: Deployment) -> None:
    gw = stub_gateway
    assert _post(gw, "u14").headers["x-adapter-version"] == "1"  # cached now, for the resolution TTL
    publish(gw.store, "u14", None, 2)  # a refit publishes v2 and deletes v1's files at once
    for path in ("/generate", "/generate_stream"):
        r = _post(gw, "u14", path, inputs="stub:424-v1")
        assert r.status_code == 200, r.text
        assert "v00000002" in r.text


def test_user_request_and_token_limits(stub_gateway: Deployment) -> None:
    gw = stub_gateway
    statuses = [_post(gw, "u01").status_code for _ in range(6)]  # the burst
    assert statuses == [200] * 6
    r = _post(gw, "u01")
    assert (r.status_code, r.json()["error_type"]) == (429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1
    assert _post(gw, "u02").status_code == 200  # one user's limit is not another's
    # 50 tokens of burst, charged as generated: 16 + 16 + 16 + 16 puts u03 in debt, then it must wait
    for _ in range(4):
        assert _post(gw, "u03", parameters={"max_new_tokens": 16}).status_code == 200
    r = _post(gw, "u03", parameters={"max_new_tokens": 16})
    assert r.status_code == 429 and "tokens" in r.json()["error"] and int(r.headers["retry-after"]) >= 1


def test_backend_429_is_retried_then_passed_through(stub_gateway: Deployment) -> None:
    gw = stub_gateway
    for path in ("/generate", "/generate_stream"):  # a stream that never opened is retried the same way
        before = sum(1 for r in _recorded(gw) if r["body"].get("inputs") == "stub:429")
        r = _post(gw, "u04", path, inputs="stub:429")
        assert (r.status_code, r.json()["error_type"]) == (429, "overloaded"), path
        after = sum(1 for r in _recorded(gw) if r["body"].get("inputs") == "stub:429")
        assert after - before == 3, path  # the first try and two retries
    assert 'soppu_gateway_upstream_retries_total{reason="overloaded"}' in httpx.get(f"{gw.url}/metrics").text


def test_stream_passes_tokens_and_error_events_through(stub_gateway: Deployment) -> None:
    gw = stub_gateway
    r = _post(gw, "u05", "/generate_stream", parameters={"max_new_tokens": 3})
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert r.status_code == 200 and len(events) == 3 and events[-1]["generated_text"].startswith("local|")
    r = _post(gw, "u05", "/generate_stream", inputs="stub:error")
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert r.status_code == 200 and events[-1] == {"error": "the forward pass failed", "error_type": "generation"}
    client = lorax.Client(gw.url, headers=gw.headers("u05"))
    with pytest.raises(GenerationError, match="forward pass failed"):
        list(client.generate_stream("stub:error"))


def _stats(gw: Deployment) -> dict[str, int]:
    total: dict[str, int] = {}
    for stub in gw.backends:
        for name, value in httpx.get(f"{stub.url}/stub/stats").json().items():
            total[name] = total.get(name, 0) + value
    return total


def test_client_disconnect_cancels_the_upstream_and_the_concurrency_cap(stub_gateway: Deployment) -> None:
    gw = stub_gateway
    cancelled = _stats(gw).get("streams_cancelled", 0)
    body = {"inputs": "stub:slow"}
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{gw.url}/generate_stream", json=body, headers=gw.headers("u06")) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
        _wait_for(lambda: _stats(gw).get("streams_cancelled", 0) == cancelled + 1)
        # The cap (3 here) fails fast while three streams are open, and frees up when they close.
        streams = [
            client.stream("POST", f"{gw.url}/generate_stream", json=body, headers=gw.headers(f"u0{n}"))
            for n in (7, 8, 9)
        ]
        opened = [s.__enter__() for s in streams]
        try:
            assert all(o.status_code == 200 for o in opened)
            r = _post(gw, "u12")
            assert (r.status_code, r.json()["error_type"]) == (503, "overloaded") and r.headers["retry-after"]
        finally:
            for s in streams:
                s.__exit__(None, None, None)
        _wait_for(lambda: _post(gw, "u12").status_code == 200)


def test_one_user_cannot_hold_more_than_its_in_flight_cap(stub_gateway: Deployment) -> None:
    gw = stub_gateway
    body = {"inputs": "stub:slow"}
    with httpx.Client(timeout=30) as client:
        streams = [
            client.stream("POST", f"{gw.url}/generate_stream", json=body, headers=gw.headers("u13")) for _ in range(2)
        ]
        opened = [s.__enter__() for s in streams]
        try:
            assert all(o.status_code == 200 for o in opened)
            r = _post(gw, "u13")  # a third request of the same user while two are inside (the cap here is 2)
            assert (r.status_code, r.json()["error_type"]) == (429, "too_many_in_flight"), r.text
            assert r.headers["retry-after"] == "1"
            assert _post(gw, "u15").status_code == 200  # other users are served meanwhile
        finally:
            for s in streams:
                s.__exit__(None, None, None)
        _wait_for(lambda: _post(gw, "u13").status_code == 200)  # the slots come back when the streams end


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_stalled_body_gets_408_and_the_others_are_served_meanwhile(stub_gateway: Deployment) -> None:
    gw = stub_gateway
    host, port = gw.url.removeprefix("http://").split(":")
    head = (
        f"POST /generate HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {gw.keys['u00']}\r\ncontent-length: 100\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as stalled:  # timeout: a hang guard only
        stalled.sendall(head.encode() + b'{"inputs": ')  # the head, a tenth of the body, then nothing
        for user in ("u02", "u05"):
            assert _post(gw, user).status_code == 200
        answer = _read_all(stalled)  # the whole answer, then the server closes the connection
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout", answer
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error_type"] == "request_timeout"
    assert b"connection: close" in rest.lower()
    too_large = httpx.post(
        f"{gw.url}/generate", content=(b"x" * 1024 for _ in range(8)), headers=gw.headers("u00")
    )  # chunked, no length: counted as it arrives (the cap here is 4096)
    assert (too_large.status_code, too_large.json()["error_type"]) == (413, "request_too_large")


def test_failover_then_no_backend(stub_gateway: Deployment, tmp_path: Path) -> None:
    gw = stub_gateway
    first = _post(gw, "u11")
    assert first.status_code == 200
    serving = _served_by(gw, first.headers["x-request-id"])
    ports = [int(stub.url.rsplit(":", 1)[1]) for stub in gw.backends]
    try:
        gw.backends[serving].stop()
        r = _post(gw, "u11")  # at once: the connection failure moves on to the next backend of the ring
        assert r.status_code == 200, r.text
        assert _served_by(gw, r.headers["x-request-id"]) == 1 - serving
        gw.backends[1 - serving].stop()
        r = _post(gw, "u11")
        assert (r.status_code, r.json()["error_type"]) == (503, "no_backend")
        _wait_for(lambda: httpx.get(f"{gw.url}/readyz").status_code == 503)
    finally:
        gw.backends = [start_stub(tmp_path / f"stub-{i}.log", port) for i, port in enumerate(ports)]
    _wait_for(lambda: httpx.get(f"{gw.url}/readyz").json()["healthy_backends"] == 2)
    assert _post(gw, "u11").status_code == 200
